//! Sessions and their events from ClickHouse: the list, a session's
//! statement/request timeline, and SSH terminal replay.

use super::{ConsoleContext, Reply};

/// The page for `path`, if it is one of these.
pub async fn route(_ctx: &ConsoleContext, _path: &str, _query: &str) -> Option<Reply> {
    None
}
