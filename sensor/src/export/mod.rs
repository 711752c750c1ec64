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

impl ExportError {
    /// The reader went away (`| head`): not an error worth reporting.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            Self::Io(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
            Self::Write(e) => match e.kind() {
                ::csv::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::BrokenPipe,
                _ => false,
            },
            _ => false,
        }
    }
}
