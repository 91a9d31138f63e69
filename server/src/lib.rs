//! tetherd as a library: the gateway (Centrifugo-compatible protocol and API on the engine), the metrics
//! exposition and the plain HTTP endpoints, so that the binary and embedders share them.

pub mod gateway;
pub mod http;
pub mod metrics;
