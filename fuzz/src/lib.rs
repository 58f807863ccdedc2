//! The fuzz targets' harness for the gateway's sockets; the parsers' entry
//! points are in `consolegate::fuzzing`.

pub mod live;
