//! Where a database's schema stands against the migrations this binary carries: what `serve
//! --no-migrate` and `/readyz` check. The comparison is pure; each backend reads its own
//! `_sqlx_migrations` table (the one sqlx's migrator writes) in plain SQL.

use sqlx::migrate::{MigrationType, Migrator};

/// One row of `_sqlx_migrations`.
#[derive(Debug, Clone)]
pub struct AppliedMigration {
    pub version: i64,
    pub checksum: Vec<u8>,
    /// `false`: the migration started and failed part-way (the database needs an operator).
    pub success: bool,
}

/// The schema compared with the binary's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Migrations this binary has that the database lacks: run `sonicgw migrate`.
    pub pending: Vec<i64>,
    /// Applied migrations whose file differs from this binary's (or that failed part-way).
    pub changed: Vec<i64>,
    /// Migrations the database has that this binary does not know: a newer release migrated it.
    /// Not an error: migrations only add, so an older replica keeps working during a rollout.
    pub newer: Vec<i64>,
}

impl SchemaStatus {
    /// Compares the database's applied migrations with `migrator`'s.
    pub fn compare(migrator: &Migrator, applied: &[AppliedMigration]) -> Self {
        let mut status = Self::default();
        let ours = migrator
            .iter()
            .filter(|m| !matches!(m.migration_type, MigrationType::ReversibleDown));
        for migration in ours {
            match applied.iter().find(|a| a.version == migration.version) {
                None => status.pending.push(migration.version),
                Some(a) if !a.success || a.checksum != *migration.checksum => {
                    status.changed.push(migration.version)
                }
                Some(_) => {}
            }
        }
        status.newer = applied
            .iter()
            .filter(|a| !migrator.version_exists(a.version))
            .map(|a| a.version)
            .collect();
        status
    }

    /// Every migration of this binary is applied, unchanged.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.changed.is_empty()
    }

    /// Why the schema is not usable as it is, in words for an operator; `None` when it is current.
    pub fn problem(&self) -> Option<String> {
        if !self.changed.is_empty() {
            return Some(format!(
                "migrations {} in the database differ from this release's files (or failed part-way); \
                 the database needs an operator",
                join(&self.changed)
            ));
        }
        if !self.pending.is_empty() {
            return Some(format!(
                "the database schema is behind this release: migrations {} are not applied; \
                 run `sonicgw migrate` first",
                join(&self.pending)
            ));
        }
        None
    }
}

fn join(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrator() -> Migrator {
        sqlx::migrate!("migrations/sqlite")
    }

    fn applied_all(migrator: &Migrator) -> Vec<AppliedMigration> {
        migrator
            .iter()
            .map(|m| AppliedMigration {
                version: m.version,
                checksum: m.checksum.to_vec(),
                success: true,
            })
            .collect()
    }

    #[test]
    fn an_empty_database_has_every_migration_pending() {
        let migrator = migrator();
        let status = SchemaStatus::compare(&migrator, &[]);
        assert_eq!(status.pending.len(), migrator.iter().count());
        assert!(!status.is_current());
        assert!(status.problem().unwrap().contains("sonicgw migrate"));
    }

    #[test]
    fn a_fully_migrated_database_is_current() {
        let migrator = migrator();
        let status = SchemaStatus::compare(&migrator, &applied_all(&migrator));
        assert!(status.is_current(), "{status:?}");
        assert_eq!(status.problem(), None);
    }

    #[test]
    fn a_migration_from_a_newer_release_is_tolerated() {
        let migrator = migrator();
        let mut applied = applied_all(&migrator);
        applied.push(AppliedMigration {
            version: 99_999,
            checksum: vec![1],
            success: true,
        });
        let status = SchemaStatus::compare(&migrator, &applied);
        assert!(status.is_current());
        assert_eq!(status.newer, vec![99_999]);
    }

    #[test]
    fn a_changed_or_failed_migration_is_not_current() {
        let migrator = migrator();
        let mut applied = applied_all(&migrator);
        applied[0].checksum = vec![0; 4];
        applied[1].success = false;
        let status = SchemaStatus::compare(&migrator, &applied);
        assert_eq!(status.changed, vec![applied[0].version, applied[1].version]);
        assert!(status.problem().unwrap().contains("differ"));
    }
}
