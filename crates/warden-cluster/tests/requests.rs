//! The control plane's statements against a real PostgreSQL: a request reaches only the node
//! that owns its session (or the node it names), is taken once, answered by its taker, given
//! back for the next owner, and never taken once its asker's deadline passed; withdrawing it
//! says whether it may have happened.

mod support;

use std::time::Duration;

use support::postgres::Postgres;
use warden_cluster::requests::{Addressee, Withdrawn};
use warden_cluster::{NodeKey, Pg};

const TIMEOUT: Duration = Duration::from_secs(5);
const LONG: Duration = Duration::from_secs(60);

fn key(node: &str, incarnation: i64) -> NodeKey {
    NodeKey {
        node: node.to_owned(),
        incarnation,
    }
}

/// Nodes a and b; a owns s1.
async fn cluster(server: &Postgres) -> Pg {
    let db = Pg::connect(&server.url(), TIMEOUT).await.unwrap();
    db.migrate().await.unwrap();
    let (a, b) = (key("a", 1), key("b", 2));
    db.register(&a, None).await.unwrap();
    db.register(&b, None).await.unwrap();
    db.add_session("s1").await.unwrap();
    assert_eq!(db.claim(&a, "s1", 0).await.unwrap(), Some(1));
    db
}

fn ids(asked: &[warden_cluster::requests::Asked]) -> Vec<i64> {
    asked.iter().map(|a| a.id).collect()
}

#[tokio::test]
async fn a_request_reaches_the_owner_once_and_its_answer_comes_back() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let db = cluster(&server).await;
    assert_eq!(
        db.ask(Addressee::Session("nobody"), "op", LONG)
            .await
            .unwrap(),
        None,
        "no such session: nothing written"
    );
    let id = db
        .ask(Addressee::Session("s1"), "stop", LONG)
        .await
        .unwrap()
        .expect("written");
    assert!(
        db.asked_of("b", 10).await.unwrap().is_empty(),
        "b does not own s1"
    );
    let asked = db.asked_of("a", 10).await.unwrap();
    assert_eq!(ids(&asked), [id]);
    assert_eq!(asked[0].token.as_deref(), Some("s1"));
    assert_eq!(asked[0].op, "stop");
    assert!(
        asked[0].remaining > LONG / 2 && asked[0].remaining <= LONG,
        "{:?} left",
        asked[0].remaining
    );

    assert!(db.take("a", id).await.unwrap());
    assert!(!db.take("a", id).await.unwrap(), "taken once");
    assert!(db.asked_of("a", 10).await.unwrap().is_empty());
    assert_eq!(db.answer_to(id).await.unwrap(), None);
    assert!(
        !db.answer("b", id, "theirs").await.unwrap(),
        "only its taker answers"
    );
    assert!(db.answer("a", id, "stopped").await.unwrap());
    assert_eq!(db.answer_to(id).await.unwrap().as_deref(), Some("stopped"));
    assert_eq!(
        db.withdraw(id).await.unwrap(),
        Withdrawn::Answered("stopped".into())
    );
    assert_eq!(db.withdraw(id).await.unwrap(), Withdrawn::Gone);
    assert!(
        !db.answer("a", id, "late").await.unwrap(),
        "its asker is gone"
    );
}

#[tokio::test]
async fn withdrawing_says_whether_the_request_may_have_happened() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let db = cluster(&server).await;
    let untaken = db
        .ask(Addressee::Session("s1"), "x", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(db.withdraw(untaken).await.unwrap(), Withdrawn::Untaken);
    assert!(
        !db.take("a", untaken).await.unwrap(),
        "withdrawn: never taken"
    );

    let taken = db
        .ask(Addressee::Session("s1"), "x", LONG)
        .await
        .unwrap()
        .unwrap();
    assert!(db.take("a", taken).await.unwrap());
    assert_eq!(
        db.withdraw(taken).await.unwrap(),
        Withdrawn::Taken("a".into())
    );
}

#[tokio::test]
async fn a_request_given_back_goes_to_the_next_owner_and_none_is_taken_past_its_deadline() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let db = cluster(&server).await;
    let id = db
        .ask(Addressee::Session("s1"), "x", LONG)
        .await
        .unwrap()
        .unwrap();
    assert!(db.take("a", id).await.unwrap());
    // s1 leaves a before a carried it out: a gives it back; b, the new owner, takes it.
    assert!(db.release(&key("a", 1), "s1", 1).await.unwrap());
    assert_eq!(db.claim(&key("b", 2), "s1", 1).await.unwrap(), Some(2));
    assert!(
        !db.untake("b", id).await.unwrap(),
        "only its taker gives it back"
    );
    assert!(db.untake("a", id).await.unwrap());
    assert!(db.asked_of("a", 10).await.unwrap().is_empty());
    assert_eq!(ids(&db.asked_of("b", 10).await.unwrap()), [id]);
    assert!(db.take("b", id).await.unwrap());
    assert!(db.answer("b", id, "done").await.unwrap());
    assert!(
        !db.untake("b", id).await.unwrap(),
        "answered: not given back"
    );

    // Past its deadline a request is never taken, nor listed.
    let late = db
        .ask(Addressee::Session("s1"), "x", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(db.asked_of("b", 10).await.unwrap().is_empty());
    assert!(!db.take("b", late).await.unwrap());
    assert_eq!(db.withdraw(late).await.unwrap(), Withdrawn::Untaken);

    // Addressed to a node: only that node sees it.
    let to_a = db
        .ask(Addressee::Node("a"), "list", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&db.asked_of("a", 10).await.unwrap()), [to_a]);
    assert!(db.asked_of("b", 10).await.unwrap().is_empty());
    assert_eq!(
        db.forget_requests(Duration::ZERO).await.unwrap(),
        0,
        "none expired yet"
    );
}
