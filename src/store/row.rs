//! What the decoders need of a row, whichever backend it came from: the
//! same SQL runs on SQLite and PostgreSQL, and its rows decode alike.

use sqlx::Row;

/// A row of either backend, read by column name.
pub(crate) trait StoreRow {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn maybe_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn maybe_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
    fn maybe_flag(&self, column: &str) -> Result<Option<bool>, sqlx::Error>;
}

macro_rules! store_row {
    ($row:ty) => {
        impl StoreRow for $row {
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                self.try_get(column)
            }
            fn maybe_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(column)
            }
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                self.try_get(column)
            }
            fn maybe_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(column)
            }
            fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
                self.try_get(column)
            }
            fn maybe_flag(&self, column: &str) -> Result<Option<bool>, sqlx::Error> {
                self.try_get(column)
            }
        }
    };
}

store_row!(sqlx::sqlite::SqliteRow);
store_row!(sqlx::postgres::PgRow);
