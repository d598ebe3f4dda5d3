//! Forward-only schema migrations, embedded in the binary from the top-level `migrations/`
//! directory (one subdirectory per backend) and recorded in a `schema_version` table.
//!
//! Rules: a migration is never edited once released (a change is a new file); versions are
//! dense from 1; both backends have the same list of versions, so that a database can move
//! between them with a dump; a database whose recorded version is higher than the newest one
//! compiled in is refused ([`crate::StoreError::SchemaTooNew`]) rather than misread.

/// One migration: its version, a short name and the SQL that applies it.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// The version this migration brings the schema to.
    pub version: i64,
    /// The file's name without the number and the extension.
    pub name: &'static str,
    /// The SQL, applied in one transaction together with its `schema_version` row.
    pub sql: &'static str,
}

/// The SQLite migrations, in order.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "conversation_seq",
        sql: include_str!("../../../migrations/sqlite/0002_conversation_seq.sql"),
    },
    Migration {
        version: 3,
        name: "device_keys",
        sql: include_str!("../../../migrations/sqlite/0003_device_keys.sql"),
    },
];

/// The PostgreSQL migrations, in order.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "conversation_seq",
        sql: include_str!("../../../migrations/postgres/0002_conversation_seq.sql"),
    },
    Migration {
        version: 3,
        name: "device_keys",
        sql: include_str!("../../../migrations/postgres/0003_device_keys.sql"),
    },
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION_LATEST: i64 = 3;

const _: () = {
    assert!(SQLITE.len() == POSTGRES.len());
    assert!(SQLITE[SQLITE.len() - 1].version == SCHEMA_VERSION_LATEST);
    assert!(POSTGRES[POSTGRES.len() - 1].version == SCHEMA_VERSION_LATEST);
    let mut i = 0;
    while i < SQLITE.len() {
        assert!(SQLITE[i].version == i as i64 + 1);
        assert!(POSTGRES[i].version == i as i64 + 1);
        i += 1;
    }
};

/// The migrations still to apply to a database at `current`, or the refusal for a database
/// from the future.
pub(crate) fn pending(
    list: &'static [Migration],
    current: i64,
) -> Result<&'static [Migration], crate::StoreError> {
    if current > SCHEMA_VERSION_LATEST {
        return Err(crate::StoreError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION_LATEST,
        });
    }
    let applied = usize::try_from(current.max(0)).unwrap_or(usize::MAX);
    Ok(list.get(applied..).unwrap_or(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_the_tail_and_the_future_is_refused() {
        assert_eq!(pending(SQLITE, 0).unwrap().len(), SQLITE.len());
        assert!(pending(SQLITE, SCHEMA_VERSION_LATEST).unwrap().is_empty());
        assert!(matches!(
            pending(POSTGRES, SCHEMA_VERSION_LATEST + 1),
            Err(crate::StoreError::SchemaTooNew { found, .. }) if found == SCHEMA_VERSION_LATEST + 1
        ));
    }

    #[test]
    fn every_migration_opens_with_a_header_comment() {
        for m in SQLITE.iter().chain(POSTGRES) {
            assert!(m.sql.starts_with("-- "), "{} has no header comment", m.name);
        }
    }
}
