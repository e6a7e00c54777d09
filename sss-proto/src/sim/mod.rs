//! The in-process network simulator (being written).
