//! egret-proxy: the data plane.
