//! Export: flows out of the database for people and scripts.
pub mod csv;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("database {path}: reading flows: {source}")]
    Query {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("writing output: {0}")]
    Write(#[from] ::csv::Error),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}
