//! tenantdb's HTTP server.
