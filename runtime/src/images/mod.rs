//! The image store (filled by the images work).
