//! egret-testkit: test-only helpers.
