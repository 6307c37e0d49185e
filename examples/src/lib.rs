//! ferry-examples: small programs under `src/bin/` that a new user copies from.
