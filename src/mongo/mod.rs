//! MongoDB: the database argument (URL classification and redaction).

pub mod url;
