//! Hrana over HTTP (versions 2 and 3, JSON), the protocol libSQL clients speak.

pub mod exec;
pub mod http;
pub mod proto;
pub mod streams;
