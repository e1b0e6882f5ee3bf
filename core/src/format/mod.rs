//! The change format: hand-written byte encodings, values, ids, and changes with their
//! signatures. Pure data: nothing here touches a database.

pub mod change;
pub mod codec;
pub mod ids;
pub mod signature;
pub mod value;
