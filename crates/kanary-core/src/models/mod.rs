//! The anomaly models. Each takes standardised rows and scores them, higher = more anomalous.

pub mod autoencoder;
pub mod codev;
pub mod hst;
pub mod iforest;
pub mod nn;
pub mod novelty;
pub mod tcn;
pub mod zscore;
