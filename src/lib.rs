pub mod data;
pub mod import;
