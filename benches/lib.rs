//! Remote functions shared by the rayfork benches.
