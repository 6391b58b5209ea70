//! Black-box tests of the exporter against the in-process balena simulator, both on port 0.

mod abuse;
mod application;
mod background;
mod docs;
mod egress;
mod faults;
mod helpers;
mod host;
mod limits;
mod operations;
mod probe;
mod stub;
mod surface;
mod targets;
mod untrusted;
