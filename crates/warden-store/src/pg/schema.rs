//! The store's tables in PostgreSQL, beside `warden-cluster`'s membership and ownership tables
//! (`warden_node`, `warden_session`), whose fences every write checks.

/// Created once under the same advisory lock as the cluster's tables, so that nodes starting
/// together do not race on them. Device ids come from a sequence: never reused, so a writer
/// of deleted credentials can never write into a later device of the same token.
pub(crate) const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7716290311);
CREATE TABLE IF NOT EXISTS warden_device (
  id     bigserial PRIMARY KEY,
  token  text  NOT NULL UNIQUE,
  device bytea);
CREATE TABLE IF NOT EXISTS warden_kv (
  device_id bigint  NOT NULL REFERENCES warden_device (id),
  ns        integer NOT NULL,
  k         bytea   NOT NULL,
  v         bytea   NOT NULL,
  PRIMARY KEY (device_id, ns, k));
COMMIT;";
