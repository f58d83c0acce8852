//! The control plane across nodes: an operation on a session that another node runs is written
//! to `warden_request` and announced on [`ASKED`]; the node that runs the session takes it,
//! carries it out, writes the answer and announces it on [`ANSWERED`] (its payload is the
//! request's id). The asker reads the answer and deletes the row.
//!
//! A request names either a session (it goes to whichever node runs it, even one that claims
//! it after the request was written) or a node (`list`, `health`: each node answers for
//! itself). Operations and answers are opaque text here (the control protocol's JSON).
//!
//! Nothing is lost or done twice: a request is taken by one node at most (a compare-and-swap
//! on `taken_by`), and only until it expires (the asker's deadline, on the database's clock):
//! an asker that gives up, or dies, leaves nothing that could still be carried out later. It
//! withdraws the request in one statement that says whether it had been taken, so its caller
//! learns whether the operation may have happened.

use std::time::Duration;

use crate::error::ClusterError;
use crate::pg::Pg;

/// The notification channel that says requests are waiting.
pub const ASKED: &str = "warden_asked";
/// The notification channel that says a request was answered; the payload is its id.
pub const ANSWERED: &str = "warden_answered";

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressee<'a> {
    /// The node that runs this session, whichever it is when the request is taken.
    Session(&'a str),
    /// This node (by its configured name).
    Node(&'a str),
}

/// A request waiting for a node to take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// Its id.
    pub id: i64,
    /// The session it is about, if it was addressed to one.
    pub token: Option<String>,
    /// The operation.
    pub op: String,
    /// How long until its asker gives up (the work is bounded by it).
    pub remaining: Duration,
}

/// What withdrawing a request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawn {
    /// It had been answered meanwhile: the answer.
    Answered(String),
    /// A node had taken it and not answered yet: the operation may still happen there.
    Taken(String),
    /// No node had taken it: nothing happened.
    Untaken,
    /// It was gone already.
    Gone,
}

impl Withdrawn {
    /// What a withdrawn row's `taken_by` and `reply` say.
    pub fn of(taken_by: Option<String>, reply: Option<String>) -> Self {
        match (reply, taken_by) {
            (Some(reply), _) => Withdrawn::Answered(reply),
            (None, Some(node)) => Withdrawn::Taken(node),
            (None, None) => Withdrawn::Untaken,
        }
    }
}

impl Pg {
    /// Writes a request, to be taken within `expires` at most, and announces it. `None` when
    /// it is addressed to a session that is not in the cluster (nothing is written then).
    pub async fn ask(
        &self,
        to: Addressee<'_>,
        op: &str,
        expires: Duration,
    ) -> Result<Option<i64>, ClusterError> {
        let (token, node) = match to {
            Addressee::Session(token) => (Some(token), None),
            Addressee::Node(node) => (None, Some(node)),
        };
        let secs = expires.as_secs_f64();
        // One statement: the row and its announcement commit together.
        let rows = self
            .within(self.client().query(
                "WITH asked AS (INSERT INTO warden_request (token, node, op, expires) \
                   SELECT $1, $2, $3, now() + make_interval(secs => $5) WHERE $1::text IS NULL \
                     OR EXISTS (SELECT 1 FROM warden_session WHERE token = $1) \
                   RETURNING id) \
                 SELECT id, pg_notify($4, '') FROM asked",
                &[&token, &node, &op, &ASKED, &secs],
            ))
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// The answer to request `id`, if there is one yet.
    pub async fn answer_to(&self, id: i64) -> Result<Option<String>, ClusterError> {
        let rows = self
            .within(self.client().query(
                "SELECT reply FROM warden_request WHERE id = $1 AND reply IS NOT NULL",
                &[&id],
            ))
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// Deletes request `id`, saying what state it was in.
    pub async fn withdraw(&self, id: i64) -> Result<Withdrawn, ClusterError> {
        let rows = self
            .within(self.client().query(
                "DELETE FROM warden_request WHERE id = $1 RETURNING taken_by, reply",
                &[&id],
            ))
            .await?;
        Ok(match rows.first() {
            None => Withdrawn::Gone,
            Some(row) => Withdrawn::of(row.get(0), row.get(1)),
        })
    }

    /// The requests waiting for `node`: those addressed to it, and those about sessions the
    /// database says it owns. Oldest first, at most `limit`.
    pub async fn asked_of(&self, node: &str, limit: usize) -> Result<Vec<Asked>, ClusterError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .within(self.client().query(
                "SELECT r.id, r.token, r.op, \
                   greatest(extract(epoch FROM r.expires - now()), 0)::float8 \
                 FROM warden_request r \
                 WHERE r.taken_by IS NULL AND r.expires > now() AND (r.node = $1 OR EXISTS \
                   (SELECT 1 FROM warden_session s WHERE s.token = r.token AND s.owner_node = $1)) \
                 ORDER BY r.id LIMIT $2",
                &[&node, &limit],
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|r| Asked {
                id: r.get(0),
                token: r.get(1),
                op: r.get(2),
                remaining: Duration::try_from_secs_f64(r.get(3)).unwrap_or_default(),
            })
            .collect())
    }

    /// Takes request `id` for `node`; false if another node took it, its asker withdrew it,
    /// or it expired.
    pub async fn take(&self, node: &str, id: i64) -> Result<bool, ClusterError> {
        let n = self
            .within(self.client().execute(
                "UPDATE warden_request SET taken_by = $1 \
                 WHERE id = $2 AND taken_by IS NULL AND expires > now()",
                &[&node, &id],
            ))
            .await?;
        Ok(n == 1)
    }

    /// Gives request `id` back untaken (its session left `node` before it was carried out),
    /// for the next node that runs the session; false if it was answered or is gone.
    pub async fn untake(&self, node: &str, id: i64) -> Result<bool, ClusterError> {
        let rows = self
            .within(self.client().query(
                "WITH back AS (UPDATE warden_request SET taken_by = NULL \
                   WHERE id = $2 AND taken_by = $1 AND reply IS NULL RETURNING 1) \
                 SELECT pg_notify($3, '') FROM back",
                &[&node, &id, &ASKED],
            ))
            .await?;
        Ok(rows.len() == 1)
    }

    /// Answers request `id` (taken by `node`) and announces it; false if its asker gave up.
    pub async fn answer(&self, node: &str, id: i64, reply: &str) -> Result<bool, ClusterError> {
        let rows = self
            .within(self.client().query(
                "WITH answered AS (UPDATE warden_request SET reply = $3 \
                   WHERE id = $2 AND taken_by = $1 RETURNING id) \
                 SELECT pg_notify($4, id::text) FROM answered",
                &[&node, &id, &reply, &ANSWERED],
            ))
            .await?;
        Ok(rows.len() == 1)
    }

    /// Deletes requests expired for longer than `age` (their askers are gone); how many.
    pub async fn forget_requests(&self, age: Duration) -> Result<u64, ClusterError> {
        let secs = age.as_secs_f64();
        self.within(self.client().execute(
            "DELETE FROM warden_request WHERE expires < now() - make_interval(secs => $1)",
            &[&secs],
        ))
        .await
    }

    /// The sessions in the cluster, each with the node that owns it (`None`: released, or
    /// owned by a node declared dead), ordered by token.
    pub async fn placements(&self) -> Result<Vec<(String, Option<String>)>, ClusterError> {
        let rows = self
            .within(self.client().query(
                "SELECT s.token, CASE WHEN n.dead THEN NULL ELSE s.owner_node END \
                 FROM warden_session s LEFT JOIN warden_node n \
                 ON n.node_id = s.owner_node AND n.incarnation = s.owner_inc ORDER BY s.token",
                &[],
            ))
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The nodes alive, by name.
    pub async fn live_nodes(&self) -> Result<Vec<String>, ClusterError> {
        let rows = self
            .within(self.client().query(
                "SELECT DISTINCT node_id FROM warden_node WHERE NOT dead ORDER BY node_id",
                &[],
            ))
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::Withdrawn;

    #[test]
    fn a_withdrawn_request_says_whether_it_may_have_happened() {
        let some = |s: &str| Some(s.to_owned());
        let rows = [
            // (taken_by, reply) -> what it was
            (None, None, Withdrawn::Untaken),
            (some("b"), None, Withdrawn::Taken("b".into())),
            (some("b"), some("{}"), Withdrawn::Answered("{}".into())),
            (None, some("{}"), Withdrawn::Answered("{}".into())),
        ];
        for (taken_by, reply, expected) in rows {
            assert_eq!(
                Withdrawn::of(taken_by.clone(), reply.clone()),
                expected,
                "{taken_by:?} {reply:?}"
            );
        }
    }
}
