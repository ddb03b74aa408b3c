//! The storage contract: both stores must behave alike for the same calls.

use std::sync::Arc;

use quotagate::storage::memory::MemoryStore;
use quotagate::storage::{
    ConfigChange, ConfigOp, ConfigStore, Guard, GuardFailed, Kind, LogPosition, Store,
};

use quotagate::storage::keys::Keys;

use crate::common::{redis_store, shared_cluster, shared_redis, unique_prefix};

fn put(kind: Kind, id: &str, guard: Guard) -> ConfigOp {
    ConfigOp::Put {
        kind,
        id: id.into(),
        doc: format!("{{\"id\":\"{id}\"}}"),
        guard,
    }
}

/// Applies `ops`, which must pass their guards, and answers whether they changed anything,
/// checking that a batch that did is logged at the end of the change log.
async fn applied(store: &dyn ConfigStore, ops: &[ConfigOp]) -> bool {
    let logged = store.apply(ops).await.unwrap().unwrap();
    if let Some(position) = logged {
        assert_eq!(position, store.change_cursor().await.unwrap());
    }
    logged.is_some()
}

async fn contract(store: Arc<dyn ConfigStore>) {
    let start = store.change_cursor().await.unwrap();
    assert_eq!(store.get(Kind::Meter, "m1").await.unwrap(), None);

    // Guards are checked before anything is written.
    let ops = [
        put(Kind::Meter, "m1", Guard::Absent),
        ConfigOp::Require {
            kind: Kind::Customer,
            id: "c1".into(),
        },
    ];
    assert_eq!(
        store.apply(&ops).await.unwrap(),
        Err(GuardFailed { index: 1 })
    );
    assert_eq!(store.get(Kind::Meter, "m1").await.unwrap(), None);

    let ops = [
        put(Kind::Meter, "m1", Guard::Absent),
        put(Kind::Meter, "m0", Guard::Always),
        ConfigOp::PutIfAbsent {
            kind: Kind::Customer,
            id: "c1".into(),
            doc: "{\"id\":\"c1\"}".into(),
        },
    ];
    assert!(applied(store.as_ref(), &ops).await);
    assert_eq!(
        store
            .apply(&[put(Kind::Meter, "m1", Guard::Absent)])
            .await
            .unwrap(),
        Err(GuardFailed { index: 0 })
    );
    assert_eq!(
        store
            .apply(&[put(Kind::Meter, "zz", Guard::Present)])
            .await
            .unwrap(),
        Err(GuardFailed { index: 0 })
    );
    // PutIfAbsent never overwrites and never fails.
    let keep = ConfigOp::PutIfAbsent {
        kind: Kind::Customer,
        id: "c1".into(),
        doc: "{\"id\":\"other\"}".into(),
    };
    assert!(!applied(store.as_ref(), &[keep]).await, "nothing written");
    assert_eq!(
        store.get(Kind::Customer, "c1").await.unwrap().as_deref(),
        Some("{\"id\":\"c1\"}")
    );

    // Pages are in ID order and resume strictly after the cursor.
    for id in ["m3", "m2"] {
        store
            .apply(&[put(Kind::Meter, id, Guard::Always)])
            .await
            .unwrap()
            .unwrap();
    }
    let ids = |page: Vec<(String, String)>| page.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.page(Kind::Meter, None, 2).await.unwrap()),
        ["m0", "m1"]
    );
    assert_eq!(
        ids(store.page(Kind::Meter, Some("m1"), 10).await.unwrap()),
        ["m2", "m3"]
    );
    assert_eq!(
        ids(store.page(Kind::Meter, Some("m3"), 10).await.unwrap()),
        Vec::<String>::new()
    );
    let mut all = store.all(Kind::Meter).await.unwrap();
    all.sort();
    assert_eq!(
        all.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["m0", "m1", "m2", "m3"]
    );
    assert!(
        all.iter()
            .all(|(id, doc)| *doc == format!("{{\"id\":\"{id}\"}}"))
    );
    assert!(store.page(Kind::Limit, None, 10).await.unwrap().is_empty());

    let deleted = [
        ConfigOp::Delete {
            kind: Kind::Meter,
            id: "m2".into(),
            guard: Guard::Present,
        },
        ConfigOp::Delete {
            kind: Kind::Meter,
            id: "never".into(),
            guard: Guard::Always,
        },
    ];
    assert!(applied(store.as_ref(), &deleted).await);
    let gone = [ConfigOp::Delete {
        kind: Kind::Meter,
        id: "m2".into(),
        guard: Guard::Present,
    }];
    assert_eq!(
        store.apply(&gone).await.unwrap(),
        Err(GuardFailed { index: 0 })
    );

    // The change log holds every effective change in order, deletions without a document.
    let (changes, cursor) = store.changes_after(start, 100).await.unwrap().unwrap();
    let summary: Vec<(Kind, &str, bool)> = changes
        .iter()
        .map(|c| (c.kind, c.id.as_str(), c.doc.is_some()))
        .collect();
    assert_eq!(
        summary,
        [
            (Kind::Meter, "m1", true),
            (Kind::Meter, "m0", true),
            (Kind::Customer, "c1", true),
            (Kind::Meter, "m3", true),
            (Kind::Meter, "m2", true),
            (Kind::Meter, "m2", false),
        ]
    );
    // Positions grow along the log; the cursor returned is the last one.
    assert!(changes.windows(2).all(|w| w[0].position < w[1].position));
    assert!(changes[0].position > start);
    assert_eq!(changes.last().unwrap().position, cursor);
    let after = |cursor: LogPosition| {
        let store = Arc::clone(&store);
        async move { store.changes_after(cursor, 100).await.unwrap().unwrap() }
    };
    assert_eq!(after(cursor).await, (Vec::<ConfigChange>::new(), cursor));
    assert_eq!(store.change_cursor().await.unwrap(), cursor);
    let (first_two, middle) = store.changes_after(start, 2).await.unwrap().unwrap();
    assert_eq!(first_two.len(), 2);
    assert_eq!(middle, first_two[1].position);
    assert_eq!(after(middle).await.0.len(), 4);

    // A document's version moves when it is touched, and only then; a batch guarded by a
    // stale version writes nothing.
    assert_eq!(store.version(Kind::Meter, "m1").await.unwrap(), 0);
    let touch = |id: &str| ConfigOp::Touch {
        kind: Kind::Meter,
        id: id.into(),
    };
    assert!(
        !applied(store.as_ref(), &[touch("m1"), touch("m3")]).await,
        "a version is not a change of the document"
    );
    store
        .apply(&[put(Kind::Meter, "m1", Guard::Present)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.version(Kind::Meter, "m1").await.unwrap(), 1);
    assert_eq!(store.version(Kind::Customer, "m1").await.unwrap(), 0);
    let delete_unless_touched_since = |version: u64| {
        [
            ConfigOp::Delete {
                kind: Kind::Meter,
                id: "m1".into(),
                guard: Guard::Present,
            },
            ConfigOp::Unchanged {
                kind: Kind::Meter,
                id: "m1".into(),
                version,
            },
        ]
    };
    assert_eq!(
        store.apply(&delete_unless_touched_since(0)).await.unwrap(),
        Err(GuardFailed { index: 1 })
    );
    assert!(store.get(Kind::Meter, "m1").await.unwrap().is_some());
    assert!(applied(store.as_ref(), &delete_unless_touched_since(1)).await);
    assert_eq!(store.get(Kind::Meter, "m1").await.unwrap(), None);
    assert_eq!(
        store.version(Kind::Meter, "m1").await.unwrap(),
        1,
        "a version outlives its document, so it never repeats for a re-created ID"
    );

    // A full read of a kind with more documents than one page of the store holds (Redis
    // pages hashes of this size) returns each exactly once.
    let many: Vec<ConfigOp> = (0..2500)
        .map(|i| put(Kind::Customer, &format!("bulk{i:04}"), Guard::Always))
        .collect();
    assert!(applied(store.as_ref(), &many).await);
    let mut ids: Vec<String> = store
        .all(Kind::Customer)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 2501, "c1 and the 2500 bulk customers");
    ids.dedup();
    assert_eq!(ids.len(), 2501, "each once");
    store.ping().await.unwrap();
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    let store = Arc::new(MemoryStore::new());
    assert_eq!(
        store.clock_offset().await.unwrap(),
        None,
        "the embedded store has no clock of its own"
    );
    contract(store).await;
}

#[tokio::test]
async fn redis_store_keeps_the_contract() {
    let store = redis_store(&shared_redis().url(), &unique_prefix()).await;
    let offset = store
        .clock_offset()
        .await
        .unwrap()
        .expect("Redis has a clock");
    assert!(offset.num_seconds().abs() < 2);
    contract(store).await;
}

/// After `trim` has dropped the oldest changes, a cursor they passed no longer reaches the
/// log (`None`: read everything again), while the latest cursor still does.
async fn a_trimmed_change_log_says_so(store: Arc<dyn ConfigStore>, trim: impl AsyncFnOnce()) {
    let first = put(Kind::Meter, "first", Guard::Always);
    store.apply(&[first]).await.unwrap().unwrap();
    let stale = store.change_cursor().await.unwrap();
    let ops: Vec<ConfigOp> = (0..3)
        .map(|i| put(Kind::Meter, &format!("m{i}"), Guard::Always))
        .collect();
    store.apply(&ops).await.unwrap().unwrap();
    let (changes, _) = store.changes_after(stale, 100).await.unwrap().unwrap();
    assert_eq!(changes.len(), 3, "nothing trimmed yet");
    trim().await;
    assert_eq!(store.changes_after(stale, 100).await.unwrap(), None);
    let latest = store.change_cursor().await.unwrap();
    let (changes, next) = store.changes_after(latest, 100).await.unwrap().unwrap();
    assert!(changes.is_empty());
    assert_eq!(next, latest);
}

/// A fresh key prefix, its change log's key, and the command that trims that log to one entry.
fn change_log_to_trim() -> (String, String, redis::Cmd) {
    let prefix = unique_prefix();
    let log = Keys::new(&prefix).config_changes();
    let xtrim = redis::cmd("XTRIM")
        .arg(&log)
        .arg("MAXLEN")
        .arg(1)
        .to_owned();
    (prefix, log, xtrim)
}

#[tokio::test]
async fn a_change_log_that_no_longer_reaches_a_cursor_says_so() {
    // The embedded store keeps the latest 10 000 changes.
    let memory = Arc::new(MemoryStore::new());
    let more = memory.clone();
    a_trimmed_change_log_says_so(memory, async move || {
        let ops: Vec<ConfigOp> = (0..10_000)
            .map(|i| put(Kind::Customer, &format!("c{i}"), Guard::Always))
            .collect();
        more.apply(&ops).await.unwrap().unwrap();
    })
    .await;
    // Redis trims its stream itself; here the test does, to one entry.
    let (prefix, _, xtrim) = change_log_to_trim();
    let store = redis_store(&shared_redis().url(), &prefix).await;
    a_trimmed_change_log_says_so(store, async || {
        let _: i64 = shared_redis().query(&xtrim);
    })
    .await;
    let (prefix, log, xtrim) = change_log_to_trim();
    let cluster = shared_cluster();
    let store = redis_store(&cluster.url(), &prefix).await;
    a_trimmed_change_log_says_so(store, async || {
        let owner = cluster.master_of(cluster.slot_of(&log));
        let _: i64 = cluster.nodes[owner].query(&xtrim);
    })
    .await;
}

/// One node sweeps the outboxes per interval, whichever asks first.
async fn sweep_claims(store: Arc<dyn Store>) {
    let now = 1_800_000_000_000;
    assert!(
        store.claim_sweep(now, 10_000).await.unwrap(),
        "nobody swept yet"
    );
    assert!(
        !store.claim_sweep(now + 9_999, 10_000).await.unwrap(),
        "swept less than an interval ago"
    );
    assert!(store.claim_sweep(now + 10_000, 10_000).await.unwrap());
    assert!(!store.claim_sweep(now + 10_000, 10_000).await.unwrap());
}

#[tokio::test]
async fn sweeps_are_claimed_once_per_interval() {
    sweep_claims(Arc::new(MemoryStore::new())).await;
    sweep_claims(redis_store(&shared_redis().url(), &unique_prefix()).await).await;
    sweep_claims(redis_store(&shared_cluster().url(), &unique_prefix()).await).await;
}

/// Credits, debits against a ceiling, idempotent repeats, transaction pages and dropping a
/// balance behave alike on every store.
async fn balance_movements(store: Arc<dyn Store>) {
    use quotagate::domain::ids::CustomerId;
    use quotagate::storage::balances::{Movement, MovementOutcome, split_transaction_member};

    let customer = CustomerId::parse("id", "c1").unwrap();
    let movement =
        |id: &'static str, change: f64, ceiling: Option<f64>, key: Option<&'static str>| Movement {
            balance_id: "bal_1",
            spent_change: change,
            ceiling,
            transaction_id: id,
            entry: "{\"note\":\"a|b\"}",
            idempotency_key: key,
        };
    let applied = |outcome: MovementOutcome| match outcome {
        MovementOutcome::Applied(member) => member,
        other => panic!("expected applied, got {other:?}"),
    };
    let credit = applied(
        store
            .move_balance(&customer, &movement("txn_1", -10.0, None, None))
            .await
            .unwrap(),
    );
    assert_eq!(
        split_transaction_member(&credit),
        Some((-10.0, "{\"note\":\"a|b\"}"))
    );
    // Spent may reach the ceiling, not pass it.
    let debit = applied(
        store
            .move_balance(&customer, &movement("txn_2", 12.5, Some(2.5), Some("k")))
            .await
            .unwrap(),
    );
    assert_eq!(split_transaction_member(&debit).unwrap().0, 2.5);
    assert_eq!(
        store
            .move_balance(&customer, &movement("txn_3", 0.5, Some(2.5), None))
            .await
            .unwrap(),
        MovementOutcome::Refused {
            spent: 2.5,
            first_entry: None
        }
    );
    assert_eq!(
        store
            .move_balance(&customer, &movement("txn_4", 1.0, None, Some("k")))
            .await
            .unwrap(),
        MovementOutcome::Duplicate(Box::new(MovementOutcome::Applied(debit.clone()))),
        "a repeated key answers the first movement and changes nothing"
    );
    // A refusal is remembered under its key: the repeat is refused as the first was, even
    // where it would fit now.
    assert_eq!(
        store
            .move_balance(&customer, &movement("txn_5", 1.0, Some(2.5), Some("r")))
            .await
            .unwrap(),
        MovementOutcome::Refused {
            spent: 2.5,
            first_entry: None
        }
    );
    assert_eq!(
        store
            .move_balance(&customer, &movement("txn_6", 1.0, Some(99.0), Some("r")))
            .await
            .unwrap(),
        MovementOutcome::Duplicate(Box::new(MovementOutcome::Refused {
            spent: 2.5,
            first_entry: Some("{\"note\":\"a|b\"}".to_string()),
        })),
        "the refused movement's entry comes back with the refusal",
    );
    let readings = store
        .balance_readings(&customer, &["bal_1", "bal_none"])
        .await
        .unwrap();
    assert_eq!(readings[0].spent, 2.5);
    assert_eq!(readings[0].newest.as_deref(), Some(debit.as_str()));
    assert_eq!(readings[1].spent, 0.0);
    assert_eq!(readings[1].newest, None);

    // Newest first, strictly before the cursor.
    let all = store
        .transactions(&customer, "bal_1", None, 10)
        .await
        .unwrap();
    assert_eq!(all, [debit.clone(), credit.clone()]);
    let older = store
        .transactions(&customer, "bal_1", Some("txn_2"), 10)
        .await
        .unwrap();
    assert_eq!(older, [credit]);

    store.drop_balance(&customer, "bal_1").await.unwrap();
    let readings = store.balance_readings(&customer, &["bal_1"]).await.unwrap();
    assert_eq!(readings[0].spent, 0.0);
    assert_eq!(readings[0].newest, None);
}

#[tokio::test]
async fn balance_movements_keep_the_contract() {
    balance_movements(Arc::new(MemoryStore::new())).await;
    balance_movements(redis_store(&shared_redis().url(), &unique_prefix()).await).await;
    balance_movements(redis_store(&shared_cluster().url(), &unique_prefix()).await).await;
}

/// An idempotency key is claimed once; its answer, once stored, is what every repeat finds;
/// a freed key may be claimed again.
async fn replay_claims(store: Arc<dyn Store>) {
    use quotagate::storage::replays::ReplayClaim;

    assert_eq!(
        store.claim_replay("d1", 60_000).await.unwrap(),
        ReplayClaim::Claimed
    );
    assert_eq!(
        store.claim_replay("d1", 60_000).await.unwrap(),
        ReplayClaim::InProgress
    );
    store
        .finish_replay("d1", Some("201 {\"id\":1}"))
        .await
        .unwrap();
    assert_eq!(
        store.claim_replay("d1", 60_000).await.unwrap(),
        ReplayClaim::Answered("201 {\"id\":1}".into())
    );
    assert_eq!(
        store.claim_replay("d2", 60_000).await.unwrap(),
        ReplayClaim::Claimed
    );
    store.finish_replay("d2", None).await.unwrap();
    assert_eq!(
        store.claim_replay("d2", 60_000).await.unwrap(),
        ReplayClaim::Claimed
    );
}

#[tokio::test]
async fn replays_keep_the_contract() {
    replay_claims(Arc::new(MemoryStore::new())).await;
    replay_claims(redis_store(&shared_redis().url(), &unique_prefix()).await).await;
    replay_claims(redis_store(&shared_cluster().url(), &unique_prefix()).await).await;
}

/// A commit counts its cost and drops its reservation's holds in one atomic step, so no
/// decision ever sees the cost twice, as usage and as a hold: right after the commit's write,
/// before the reservation's record is finished, the hold is gone.
async fn commits_settle_in_one_step(store: Arc<dyn Store>) {
    use chrono::Utc;
    use quotagate::domain::event::Event;
    use quotagate::domain::ids::CustomerId;
    use quotagate::domain::limit::Limit;
    use quotagate::domain::meter::Meter;
    use quotagate::domain::period::BillingAnchor;
    use quotagate::domain::usage::{CustomerCalendar, ResolvedLimit, plan_event};
    use quotagate::storage::usage::{EventWrite, Mode, RecordOutcome, ReservationWrite};
    use serde_json::json;

    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    let meter = json!({"name": "tokens", "aggregation": "sum", "field": "values.tokens"});
    let meter = Arc::new(
        Meter::create("mtr_t".into(), serde_json::from_value(meter).unwrap(), now).unwrap(),
    );
    let limit = json!({"name": "daily", "meterId": "mtr_t", "limitValue": 100, "period": "day"});
    let limit = Limit::create(
        "lmt_t".into(),
        serde_json::from_value(limit).unwrap(),
        &meter,
        now,
    );
    let limits = [ResolvedLimit::new(
        Arc::new(limit.unwrap()),
        Arc::clone(&meter),
    )];
    let calendar = CustomerCalendar {
        timezone: chrono_tz::UTC,
        anchor: BillingAnchor::new(1, 1).unwrap(),
    };
    let customer = CustomerId::parse("customerId", "settling").unwrap();
    let event = |id: &str, tokens: u32| {
        let input =
            json!({"customerId": "settling", "eventType": "llm", "values": {"tokens": tokens}});
        Event::validate(id.into(), serde_json::from_value(input).unwrap(), None, now).unwrap()
    };
    let reading = async |plan: &quotagate::domain::usage::EventPlan| {
        let counters = [plan.counters[0].counter.clone()];
        let reading = store
            .read_counters(&customer, &counters, now_ms)
            .await
            .unwrap();
        (reading[0].used, reading[0].reserved)
    };

    let estimate = event("rsv_t", 30);
    let plan = plan_event(
        &estimate,
        &[Arc::clone(&meter)],
        &limits,
        &[],
        calendar,
        now,
    );
    let reserve = Mode::Reserve {
        caps: vec![Some(100.0)],
        reservation: ReservationWrite {
            id: "rsv_t".into(),
            doc: "{}".into(),
            expires_at_ms: now_ms + 60_000,
        },
    };
    let write = |event, plan, mode| EventWrite {
        event,
        plan,
        mode,
        now_ms,
    };
    let reserved = store.write(&[write(&estimate, &plan, &reserve)]).await;
    assert!(matches!(
        reserved.unwrap()[..],
        [RecordOutcome::Written { .. }]
    ));
    assert_eq!(reading(&plan).await, (0.0, 30.0));

    let actual = event("evt_t", 20);
    let commit = Mode::Commit {
        reservation_id: "rsv_t".into(),
        held: vec![plan.counters[0].counter.clone()],
    };
    let plan = plan_event(&actual, &[Arc::clone(&meter)], &limits, &[], calendar, now);
    let committed = store.write(&[write(&actual, &plan, &commit)]).await;
    let [RecordOutcome::Written { after, .. }] = &committed.unwrap()[..] else {
        panic!("the commit's event is written");
    };
    assert_eq!((after[0].used, after[0].reserved), (20.0, 0.0));
    assert_eq!(reading(&plan).await, (20.0, 0.0));
}

#[tokio::test]
async fn commits_settle_in_one_step_on_every_store() {
    commits_settle_in_one_step(Arc::new(MemoryStore::new())).await;
    commits_settle_in_one_step(redis_store(&shared_redis().url(), &unique_prefix()).await).await;
    commits_settle_in_one_step(redis_store(&shared_cluster().url(), &unique_prefix()).await).await;
}
