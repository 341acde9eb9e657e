//! One module per command.

pub mod doctor;
pub mod example;
pub mod inspect;
