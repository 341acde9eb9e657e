//! One module per command.

pub mod apply_lora;
pub mod diff;
pub mod doctor;
pub mod example;
pub mod filter;
pub mod inspect;
pub mod install;
pub mod merge;
pub mod merge_driver;
pub mod status;
pub mod track;
pub mod update;
