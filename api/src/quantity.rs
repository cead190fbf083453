//! Quantities (filled by the quantity work).
