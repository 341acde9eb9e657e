//! One module per command.

pub mod example;
pub mod filter;
pub mod inspect;
pub mod merge;
pub mod install;
pub mod status;
pub mod track;
