//! The store's tables in PostgreSQL, beside `warden-cluster`'s membership and ownership tables
//! (`warden_node`, `warden_session`), whose fences every write checks.

/// Created once under the same advisory lock as the cluster's tables, so that nodes starting
/// together do not race on them. Device ids come from a sequence: never reused, so a writer
/// of deleted credentials can never write into a later device of the same token. Journal
/// numbers come from their own sequence, taken only under [`JOURNAL_LOCK`], so they are
/// committed in the order they were given (see `pg::journal`).
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
CREATE TABLE IF NOT EXISTS warden_meta (
  name  text PRIMARY KEY,
  value text NOT NULL);
CREATE TABLE IF NOT EXISTS warden_record (
  token  text PRIMARY KEY,
  record text NOT NULL);
CREATE SEQUENCE IF NOT EXISTS warden_journal_seq;
CREATE TABLE IF NOT EXISTS warden_journal (
  seq      bigint PRIMARY KEY,
  token    text   NOT NULL,
  kind     text   NOT NULL,
  key      text   NOT NULL,
  data     text   NOT NULL,
  first_at bigint NOT NULL,
  at       bigint NOT NULL,
  repeats  bigint NOT NULL);
CREATE INDEX IF NOT EXISTS warden_journal_by_session ON warden_journal (token, seq);
CREATE INDEX IF NOT EXISTS warden_journal_by_time ON warden_journal (at);
CREATE TABLE IF NOT EXISTS warden_outbox (
  seq        bigserial PRIMARY KEY,
  token      text   NOT NULL,
  id         text   NOT NULL,
  key        text   NOT NULL,
  recipient  text   NOT NULL,
  body       text   NOT NULL,
  status     text   NOT NULL,
  reason     text,
  code       bigint,
  attempts   bigint NOT NULL,
  created_at bigint NOT NULL,
  updated_at bigint NOT NULL,
  expires_at bigint,
  UNIQUE (token, key),
  UNIQUE (token, id));
CREATE INDEX IF NOT EXISTS warden_outbox_by_status ON warden_outbox (token, status, seq);
CREATE INDEX IF NOT EXISTS warden_outbox_by_expiry ON warden_outbox (status, expires_at);
CREATE INDEX IF NOT EXISTS warden_outbox_by_chat ON warden_outbox (token, recipient, status);
CREATE TABLE IF NOT EXISTS warden_webhook (
  hook  text   PRIMARY KEY,
  start bigint NOT NULL);
CREATE TABLE IF NOT EXISTS warden_session_webhook (
  hook   text PRIMARY KEY,
  token  text NOT NULL,
  config text NOT NULL);
CREATE TABLE IF NOT EXISTS warden_webhook_cursor (
  hook  text   NOT NULL,
  token text   NOT NULL,
  seq   bigint NOT NULL,
  PRIMARY KEY (hook, token));
CREATE TABLE IF NOT EXISTS warden_webhook_dead (
  hook      text   NOT NULL,
  seq       bigint NOT NULL,
  token     text   NOT NULL,
  kind      text   NOT NULL,
  body      text   NOT NULL,
  reason    text   NOT NULL,
  attempts  bigint NOT NULL,
  failed_at bigint NOT NULL,
  PRIMARY KEY (hook, seq));
COMMIT;";

/// The transaction-level advisory lock every journal append takes before its number, and
/// holds until its commit (anything else that appends to `warden_journal` must take it too).
pub const JOURNAL_LOCK: i64 = 7_716_290_312;
