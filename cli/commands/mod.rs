//! One module per command.

pub mod example;
pub mod inspect;
pub mod merge;
