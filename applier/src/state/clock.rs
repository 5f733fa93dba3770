//! The clock that only moves forward (docs/SITE.md, "Time and expiry"): the
//! highest time this node has seen, from its own clock and from the
//! `created_at` of every bundle it verified, kept in the state database so
//! that setting the clock back cannot revive an expired bundle or trust.

use rusqlite::{params, OptionalExtension as _};

use super::{State, StateError};

/// The highest time seen, and what showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HighestTime {
    /// Unix seconds.
    pub at: i64,
    /// What showed it: `the clock` or `bundle NAME VERSION (created_at)`.
    pub source: String,
}

impl State {
    /// The highest time recorded, if any.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn highest_time(&self) -> Result<Option<HighestTime>, StateError> {
        self.conn
            .query_row("SELECT at, source FROM clock WHERE id = 1", [], |r| {
                Ok(HighestTime {
                    at: r.get(0)?,
                    source: r.get(1)?,
                })
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Records `at` (Unix seconds), shown by `source`, when it is higher
    /// than the time recorded; never lowers it.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn observe_time(&self, at: i64, source: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO clock (id, at, source) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at, source = excluded.source
                 WHERE excluded.at > clock.at",
                params![at, source],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_time_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.highest_time().unwrap(), None);
        state.observe_time(100, "the clock").unwrap();
        state.observe_time(50, "the clock").unwrap();
        assert_eq!(state.highest_time().unwrap().unwrap().at, 100);
        state.observe_time(200, "bundle demo 1.1.0").unwrap();
        let high = state.highest_time().unwrap().unwrap();
        assert_eq!((high.at, high.source.as_str()), (200, "bundle demo 1.1.0"));
    }
}
