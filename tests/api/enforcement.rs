//! Consume and reservations (API.md §5.2, §5.3) on both stores.

use chrono::TimeDelta;
use quotagate::domain::ids::CustomerId;
use quotagate::storage::usage::Finish;
use serde_json::{Value, json};

use crate::common::{
    CONSUME_ALLOWED, CONSUME_REFUSED, RESERVE_ALLOWED, RESERVE_REFUSED, TestApp, abandon,
    gated_post, keys, state,
};
use crate::every_store;

every_store!(
    consume_admits_until_full_then_refuses,
    consume_is_all_or_nothing_across_limits,
    consume_count_max_latest_rules,
    fractions_add_up_as_decimals,
    consume_honours_idempotency,
    reservation_lifecycle,
    reservations_count_as_reserved_everywhere,
    large_fractional_holds_keep_their_digits,
    reservations_expire_without_any_call,
    holds_never_leak_into_the_next_window,
    reservation_refusals_and_conflicts,
    a_release_while_a_commit_runs_is_refused,
    a_commit_whose_client_stopped_waiting_is_made_all_the_same,
    bad_decision_input,
);

fn tokens(customer: &str, n: f64) -> Value {
    json!({"customerId": customer, "eventType": "llm", "values": {"tokens": n}})
}

async fn used(app: &TestApp, customer: &str, limit_id: &str) -> (Value, Value) {
    let answer = app
        .post("/v1/limits/check", json!({"customerId": customer}))
        .await;
    let state = state(&answer.body, limit_id).clone();
    (state["used"].clone(), state["reserved"].clone())
}

/// 0.1 + 0.2 is 0.30000000000000004 in binary: a third 0.1 still fits under 0.3 (API.md §0:
/// fractional values keep at least 1e-6 precision), and usage reads 0.3.
async fn fractions_add_up_as_decimals(app: TestApp) {
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 0.3, "period": "day"}))
        .await;
    for expected in [0.1, 0.2, 0.3] {
        let answer = app.post("/v1/limits/consume", tokens("frac", 0.1)).await;
        let body = answer.assert_status(200);
        assert_eq!(body["allowed"], true, "{body}");
        assert_eq!(state(body, &daily)["used"], expected);
    }
    let full = app.post("/v1/limits/consume", tokens("frac", 0.1)).await;
    let body = full.assert_status(200);
    assert_eq!(body["allowed"], false);
    assert_eq!(state(body, &daily)["remaining"], 0);
    let check = app
        .post("/v1/limits/check", json!({"customerId": "frac"}))
        .await;
    assert_eq!(check.body["allowed"], false, "full at 0.3");
    assert_eq!(state(&check.body, &daily)["exceeded"], true);
}

async fn consume_admits_until_full_then_refuses(app: TestApp) {
    let meter = app.tokens_meter().await;
    let hourly = app
        .limit(json!({"name": "h", "meterId": meter, "limitValue": 10, "period": "hour"}))
        .await;
    for _ in 0..2 {
        let answer = app.post("/v1/limits/consume", tokens("cons", 4.0)).await;
        let body = answer.assert_status(200);
        assert_eq!(body["allowed"], true);
        assert!(body["eventId"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(body["degraded"], false);
        assert_eq!(keys(body), CONSUME_ALLOWED);
        assert!(answer.header("retry-after").is_none());
    }
    let refused = app.post("/v1/limits/consume", tokens("cons", 4.0)).await;
    let body = refused.assert_status(200);
    assert_eq!(body["allowed"], false);
    assert_eq!(keys(body), CONSUME_REFUSED, "nothing recorded: no eventId");
    assert_eq!(state(body, &hourly)["used"], 8);
    assert_eq!(state(body, &hourly)["remaining"], 2);
    let reset = state(body, &hourly)["reset"].as_i64().unwrap();
    let retry = body["retryAfter"].as_i64().unwrap();
    let expected = reset - chrono::Utc::now().timestamp();
    assert!(
        (retry - expected).abs() <= 1,
        "retryAfter {retry} vs {expected}"
    );
    assert_eq!(
        refused.header("retry-after"),
        Some(retry.to_string().as_str())
    );
    assert_eq!(refused.header("ratelimit-limit"), Some("10"));
    assert_eq!(refused.header("ratelimit-remaining"), Some("2"));
    assert!(refused.header("ratelimit-reset").is_some());
    // Exactly filling the limit is allowed.
    assert_eq!(
        app.post("/v1/limits/consume", tokens("cons", 2.0))
            .await
            .body["allowed"],
        true
    );
    assert_eq!(used(&app, "cons", &hourly).await.0, 10);
    // A counter starts with its limit: a new all_time limit counts from now on.
    let all_time = app
        .limit(json!({"name": "a", "meterId": meter, "limitValue": 10, "period": "all_time"}))
        .await;
    assert_eq!(
        app.post("/v1/limits/consume", tokens("forever", 10.0))
            .await
            .body["allowed"],
        true
    );
    let refused = app.post("/v1/limits/consume", tokens("forever", 1.0)).await;
    assert_eq!(refused.body["allowed"], false);
    assert_eq!(
        refused.body["retryAfter"],
        Value::Null,
        "an all_time refusal never resets"
    );
    assert!(refused.header("retry-after").is_none());
    assert_eq!(state(&refused.body, &all_time)["reset"], Value::Null);
    // Nor is there a reset to announce (0 would say "retry at once"); the room left still is.
    let reserved = app.post("/v1/reservations", tokens("forever", 1.0)).await;
    let checked = app
        .post("/v1/limits/check", json!({"customerId": "forever"}))
        .await;
    for refused in [&refused, &reserved, &checked] {
        assert_eq!(refused.body["allowed"], false, "{:?}", refused.body);
        assert_eq!(refused.header("ratelimit-limit"), Some("10"));
        assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
        assert_eq!(refused.header("ratelimit-reset"), None);
    }
}

async fn consume_is_all_or_nothing_across_limits(app: TestApp) {
    let meter = app.tokens_meter().await;
    let calls = app
        .meter(json!({"name": "calls", "aggregation": "count", "field": "*"}))
        .await;
    let roomy = app
        .limit(json!({"name": "roomy", "meterId": meter, "limitValue": 1000, "period": "day"}))
        .await;
    let tight = app
        .limit(json!({"name": "tight", "meterId": calls, "limitValue": 1, "period": "day"}))
        .await;
    assert_eq!(
        app.post("/v1/limits/consume", tokens("aon", 5.0))
            .await
            .body["allowed"],
        true
    );
    let refused = app.post("/v1/limits/consume", tokens("aon", 5.0)).await;
    assert_eq!(refused.body["allowed"], false);
    assert_eq!(
        used(&app, "aon", &roomy).await.0,
        5,
        "the roomy limit did not count the refused event"
    );
    assert_eq!(used(&app, "aon", &tight).await.0, 1);
    let events = app.get("/v1/events?customerId=aon").await;
    assert_eq!(
        events.body["data"].as_array().unwrap().len(),
        1,
        "a refused consume records nothing"
    );
}

async fn consume_count_max_latest_rules(app: TestApp) {
    let count = app
        .meter(json!({"name": "c", "aggregation": "count", "field": "*"}))
        .await;
    let max = app
        .meter(json!({"name": "m", "aggregation": "max", "field": "values.size"}))
        .await;
    let latest = app
        .meter(json!({"name": "l", "aggregation": "latest", "field": "values.level"}))
        .await;
    app.limit(json!({"name": "c", "meterId": count, "limitValue": 2, "period": "day", "customerId": "rules"})).await;
    app.limit(json!({"name": "m", "meterId": max, "limitValue": 100, "period": "day", "customerId": "rules"})).await;
    app.limit(json!({"name": "l", "meterId": latest, "limitValue": 10, "period": "day", "customerId": "rules"})).await;
    let consume = |values: Value| {
        let app = &app;
        async move {
            let answer = app
                .post(
                    "/v1/limits/consume",
                    json!({"customerId": "rules", "eventType": "x", "values": values}),
                )
                .await;
            answer.body["allowed"].as_bool().unwrap()
        }
    };
    assert!(
        !consume(json!({"size": 101})).await,
        "max: max(used, v) ≤ limit"
    );
    assert!(!consume(json!({"level": 11})).await, "latest: v ≤ limit");
    assert!(consume(json!({"size": 100, "level": 10})).await);
    assert!(
        consume(json!({"size": 5, "level": 1})).await,
        "a smaller max still fits"
    );
    assert!(
        !consume(json!({})).await,
        "count: the third event exceeds 2"
    );
}

async fn consume_honours_idempotency(app: TestApp) {
    let meter = app.tokens_meter().await;
    let id = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 100, "period": "day"}))
        .await;
    let mut body = tokens("idc", 10.0);
    body["idempotencyKey"] = json!("once");
    let first = app.post("/v1/limits/consume", body.clone()).await;
    let again = app.post("/v1/limits/consume", body).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["eventId"], first.body["eventId"]);
    assert_eq!(again.body["allowed"], true);
    assert_eq!(used(&app, "idc", &id).await.0, 10);
}

/// A commit records the event, then marks the reservation committed: a client that stops
/// waiting must not leave the first step without the second (nor make neither, here).
async fn a_commit_whose_client_stopped_waiting_is_made_all_the_same(app: TestApp) {
    let meter = app.tokens_meter().await;
    let id = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 1000, "period": "day"}))
        .await;
    let held = app.post("/v1/reservations", tokens("gone", 300.0)).await;
    let rsv = held.assert_status(200)["reservation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let commit = json!({"values": {"tokens": 120}});
    let gated = gated_post(&format!("/v1/reservations/{rsv}/commit"), &commit, &[]);
    abandon(&app, gated, async {}).await;
    app.requests_ended().await;
    let reservation = app.get(&format!("/v1/reservations/{rsv}")).await;
    assert_eq!(reservation.assert_status(200)["status"], "committed");
    assert_eq!(used(&app, "gone", &id).await, (json!(120), json!(0)));
}

async fn reservation_lifecycle(app: TestApp) {
    let meter = app.tokens_meter().await;
    let id = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 1000, "period": "day"}))
        .await;
    let held = app
        .post("/v1/reservations", json!({"customerId": "rsv", "eventType": "llm", "values": {"tokens": 300}, "dimensions": {"model": "x"}}))
        .await;
    let body = held.assert_status(200);
    assert_eq!(body["allowed"], true);
    let reservation = &body["reservation"];
    let rsv = reservation["id"].as_str().unwrap().to_string();
    assert!(rsv.starts_with("rsv_"));
    assert_eq!(reservation["status"], "held");
    assert_eq!(reservation["values"]["tokens"], 300);
    assert_eq!(state(body, &id)["reserved"], 300);
    assert_eq!(state(body, &id)["remaining"], 700);
    assert_eq!(used(&app, "rsv", &id).await, (json!(0), json!(300)));
    let fetched = app.get(&format!("/v1/reservations/{rsv}")).await;
    assert_eq!(fetched.assert_status(200)["status"], "held");

    let extended = app
        .post(
            &format!("/v1/reservations/{rsv}/extend"),
            json!({"ttlSeconds": 3600}),
        )
        .await;
    assert_eq!(extended.assert_status(200)["status"], "held");
    assert!(
        extended.body["expiresAt"].as_str().unwrap() > reservation["expiresAt"].as_str().unwrap()
    );
    // Extending never shortens a hold.
    let again = app
        .post(
            &format!("/v1/reservations/{rsv}/extend"),
            json!({"ttlSeconds": 60}),
        )
        .await;
    assert_eq!(
        again.assert_status(200)["expiresAt"],
        extended.body["expiresAt"]
    );
    // Nor do concurrent extends: the longer one stands, whichever lands last.
    let path = format!("/v1/reservations/{rsv}/extend");
    for _ in 0..5 {
        let (long, short) = tokio::join!(
            app.post(&path, json!({"ttlSeconds": 3600})),
            app.post(&path, json!({"ttlSeconds": 60})),
        );
        let long = long.assert_status(200)["expiresAt"].clone();
        short.assert_status(200);
        let now = app.get(&format!("/v1/reservations/{rsv}")).await;
        assert_eq!(now.assert_status(200)["expiresAt"], long);
    }

    let committed = app
        .post(
            &format!("/v1/reservations/{rsv}/commit"),
            json!({"values": {"tokens": 120}}),
        )
        .await;
    let body = committed.assert_status(200).clone();
    assert_eq!(body["reservation"]["status"], "committed");
    assert_eq!(body["reservation"]["values"]["tokens"], 120);
    let event_id = body["eventId"].as_str().unwrap().to_string();
    assert_eq!(state(&body, &id)["used"], 120);
    assert_eq!(state(&body, &id)["reserved"], 0);
    assert_eq!(used(&app, "rsv", &id).await, (json!(120), json!(0)));
    // Commit is idempotent: same event, nothing counted twice.
    let again = app
        .post(
            &format!("/v1/reservations/{rsv}/commit"),
            json!({"values": {"tokens": 999}}),
        )
        .await;
    assert_eq!(again.assert_status(200)["eventId"], event_id.as_str());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(used(&app, "rsv", &id).await.0, 120);
    // A repeat answers the first answer (the values recorded, the limits as they are), not
    // one made of its own body, even with values no limit counts.
    assert_eq!(&again.body, &body);
    let other = app
        .post(
            &format!("/v1/reservations/{rsv}/commit"),
            json!({"values": {"other": 5}}),
        )
        .await;
    assert_eq!(other.assert_status(200), &body);
    assert_eq!(other.header("idempotent-replayed"), Some("true"));
    // The reservation shows what was recorded, not the estimate.
    let fetched = app.get(&format!("/v1/reservations/{rsv}")).await;
    assert_eq!(fetched.assert_status(200), &body["reservation"]);
    app.post(&format!("/v1/reservations/{rsv}/release"), json!({}))
        .await
        .assert_error(409, "conflict");
    let events = app.get("/v1/events?customerId=rsv").await;
    let data = events.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["dimensions"]["model"], "x");

    // Release: drops the hold, idempotent; commit after release is a conflict.
    let second = app
        .post(
            "/v1/reservations",
            json!({"customerId": "rsv", "eventType": "llm", "values": {"tokens": 50}}),
        )
        .await;
    let second = second.body["reservation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(used(&app, "rsv", &id).await.1, 50);
    let released = app
        .call(
            axum::http::Method::POST,
            &format!("/v1/reservations/{second}/release"),
            None,
        )
        .await;
    assert_eq!(released.assert_status(200)["status"], "released");
    app.post(&format!("/v1/reservations/{second}/release"), json!({}))
        .await
        .assert_status(200);
    assert_eq!(used(&app, "rsv", &id).await, (json!(120), json!(0)));
    app.post(&format!("/v1/reservations/{second}/commit"), json!({}))
        .await
        .assert_error(409, "conflict");
    app.post(
        &format!("/v1/reservations/{second}/extend"),
        json!({"ttlSeconds": 60}),
    )
    .await
    .assert_error(409, "conflict");
    app.get("/v1/reservations/rsv_00000000000000000000000000")
        .await
        .assert_error(404, "reservation_not_found");
    app.get("/v1/reservations/nope")
        .await
        .assert_error(404, "reservation_not_found");
    for action in ["commit", "release"] {
        app.post(
            &format!("/v1/reservations/rsv_00000000000000000000000000/{action}"),
            json!({}),
        )
        .await
        .assert_error(404, "reservation_not_found");
        app.post(&format!("/v1/reservations/bad%20id/{action}"), json!({}))
            .await
            .assert_error(404, "reservation_not_found");
    }
    app.post(
        "/v1/reservations/rsv_00000000000000000000000000/extend",
        json!({"ttlSeconds": 60}),
    )
    .await
    .assert_error(404, "reservation_not_found");
}

async fn reservations_count_as_reserved_everywhere(app: TestApp) {
    let meter = app.tokens_meter().await;
    let id = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 100, "period": "day"}))
        .await;
    let held = app
        .post(
            "/v1/reservations",
            json!({"customerId": "everywhere", "eventType": "llm", "values": {"tokens": 70}}),
        )
        .await;
    assert_eq!(held.body["allowed"], true);
    assert_eq!(keys(&held.body), RESERVE_ALLOWED);
    // Other consumes and reservations see the hold.
    assert_eq!(
        app.post("/v1/limits/consume", tokens("everywhere", 40.0))
            .await
            .body["allowed"],
        false
    );
    assert_eq!(
        app.post("/v1/limits/consume", tokens("everywhere", 30.0))
            .await
            .body["allowed"],
        true
    );
    let second = app
        .post(
            "/v1/reservations",
            json!({"customerId": "everywhere", "eventType": "llm", "values": {"tokens": 1}}),
        )
        .await;
    assert_eq!(second.body["allowed"], false);
    assert_eq!(keys(&second.body), RESERVE_REFUSED);
    // A check refuses once used + reserved reaches the limit.
    let check = app
        .post("/v1/limits/check", json!({"customerId": "everywhere"}))
        .await;
    assert_eq!(check.body["allowed"], false);
    assert_eq!(
        state(&check.body, &id)["exceeded"],
        false,
        "exceeded counts used only"
    );
    // Recording still counts regardless.
    let recorded = app
        .post("/v1/events/record", tokens("everywhere", 5.0))
        .await;
    assert_eq!(state(&recorded.body, &id)["used"], 35);
    assert_eq!(state(&recorded.body, &id)["reserved"], 70);
}

/// A hold's amount comes back with the nine decimals the gateway keeps, however large it is.
async fn large_fractional_holds_keep_their_digits(app: TestApp) {
    let meter = app.tokens_meter().await;
    let id = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 1e6, "period": "day"}))
        .await;
    let estimate = 123_456.123_456_789;
    let held = app
        .post(
            "/v1/reservations",
            json!({"customerId": "digits", "eventType": "llm", "values": {"tokens": estimate}}),
        )
        .await;
    assert_eq!(state(&held.body, &id)["reserved"], estimate);
    let consumed = app.post("/v1/limits/consume", tokens("digits", 1.0)).await;
    assert_eq!(state(&consumed.body, &id)["reserved"], estimate);
    assert_eq!(used(&app, "digits", &id).await.1, estimate);
}

async fn reservations_expire_without_any_call(app: TestApp) {
    let meter = app.tokens_meter().await;
    let id = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 100, "period": "month"}))
        .await;
    let held = app
        .post("/v1/reservations", json!({"customerId": "exp", "eventType": "llm", "values": {"tokens": 90}, "ttlSeconds": 30}))
        .await;
    let rsv = held.body["reservation"]["id"].as_str().unwrap().to_string();
    assert_eq!(used(&app, "exp", &id).await.1, 90);
    app.gateway.clock().shift(TimeDelta::seconds(31));
    assert_eq!(
        used(&app, "exp", &id).await.1,
        0,
        "the hold expired by itself"
    );
    assert_eq!(
        app.get(&format!("/v1/reservations/{rsv}")).await.body["status"],
        "expired"
    );
    assert_eq!(
        app.post("/v1/limits/consume", tokens("exp", 100.0))
            .await
            .body["allowed"],
        true
    );
    app.post(
        &format!("/v1/reservations/{rsv}/extend"),
        json!({"ttlSeconds": 60}),
    )
    .await
    .assert_error(409, "conflict");
    // Committing an expired reservation still records.
    let committed = app
        .post(
            &format!("/v1/reservations/{rsv}/commit"),
            json!({"values": {"tokens": 7}}),
        )
        .await;
    assert_eq!(
        committed.assert_status(200)["reservation"]["status"],
        "committed"
    );
    assert_eq!(used(&app, "exp", &id).await.0, 107);
}

async fn holds_never_leak_into_the_next_window(app: TestApp) {
    let meter = app.tokens_meter().await;
    let minute = app
        .limit(json!({"name": "m", "meterId": meter, "limitValue": 100, "period": "minute"}))
        .await;
    let held = app
        .post("/v1/reservations", json!({"customerId": "leak", "eventType": "llm", "values": {"tokens": 80}, "ttlSeconds": 3600}))
        .await;
    assert_eq!(held.body["allowed"], true);
    let window_end = state(&held.body, &minute)["reset"].as_i64().unwrap();
    // Move a second past the end of the hold's window (a second of margin over the clock's
    // calibration against Redis): the next window starts with no hold.
    let now = app.gateway.clock().now().timestamp_millis();
    app.gateway
        .clock()
        .shift(TimeDelta::milliseconds(window_end * 1000 - now + 1000));
    let (used_now, reserved_now) = used(&app, "leak", &minute).await;
    assert_eq!((used_now, reserved_now), (json!(0), json!(0)));
    assert_eq!(
        app.post("/v1/limits/consume", tokens("leak", 100.0))
            .await
            .body["allowed"],
        true
    );
}

async fn reservation_refusals_and_conflicts(app: TestApp) {
    let meter = app.tokens_meter().await;
    let max = app
        .meter(json!({"name": "peak", "aggregation": "max", "field": "values.tokens"}))
        .await;
    let id = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 100, "period": "day"}))
        .await;
    app.limit(json!({"name": "p", "meterId": max, "limitValue": 50, "period": "day"}))
        .await;
    let too_big = app
        .post(
            "/v1/reservations",
            json!({"customerId": "ref", "eventType": "llm", "values": {"tokens": 60}}),
        )
        .await;
    assert_eq!(
        too_big.body["allowed"], false,
        "the max limit refuses a 60 peak"
    );
    assert!(too_big.body["retryAfter"].is_i64());
    let fits = app
        .post(
            "/v1/reservations",
            json!({"customerId": "ref", "eventType": "llm", "values": {"tokens": 40}}),
        )
        .await;
    assert_eq!(fits.body["allowed"], true);
    assert_eq!(
        state(&fits.body, &id)["reserved"],
        40,
        "sum limits hold, max limits hold nothing"
    );
    // A commit with bad values is rejected and changes nothing: the hold can still be
    // released.
    let rsv = fits.body["reservation"]["id"].as_str().unwrap();
    app.post(
        &format!("/v1/reservations/{rsv}/commit"),
        json!({"values": {"bad-key": 5}}),
    )
    .await
    .assert_field_error("invalid_field_value", "values.bad-key");
    let fetched = app.get(&format!("/v1/reservations/{rsv}")).await;
    assert_eq!(fetched.assert_status(200)["status"], "held");
    let released = app
        .post(&format!("/v1/reservations/{rsv}/release"), json!({}))
        .await;
    assert_eq!(released.assert_status(200)["status"], "released");
    assert_eq!(used(&app, "ref", &id).await, (json!(0), json!(0)));
}

/// A commit claims its reservation before it counts the event, so a release that comes while
/// the commit runs is refused rather than both succeeding (usage counted, yet "released").
/// Here the commit's node died after its claim: the release is still refused, and the
/// client's retried commit completes the claimed one, with its event ID.
async fn a_release_while_a_commit_runs_is_refused(app: TestApp) {
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 100, "period": "day"}))
        .await;
    let held = app.post("/v1/reservations", tokens("racing", 30.0)).await;
    let rsv = held.assert_status(200)["reservation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = CustomerId::parse("customerId", "racing").unwrap();
    let event_id = "evt_01M8M8B2096H6P0M3WZ2GXBRCD";
    let begin = Finish::Begin { event_id };
    let claimed = app
        .store
        .finish_reservation(&customer, &rsv, &[], begin)
        .await;
    assert_eq!(
        claimed.unwrap(),
        Some(("committing".to_string(), event_id.to_string()))
    );

    app.post(&format!("/v1/reservations/{rsv}/release"), json!({}))
        .await
        .assert_error(409, "conflict");
    let (used, reserved) = used(&app, "racing", &daily).await;
    assert_eq!((used, reserved), (json!(0), json!(30)), "still held");

    let commit = json!({"values": {"tokens": 20}});
    let committed = app
        .post(&format!("/v1/reservations/{rsv}/commit"), commit)
        .await;
    let body = committed.assert_status(200);
    assert_eq!(body["eventId"], event_id);
    assert_eq!(body["reservation"]["status"], "committed");
    assert_eq!(
        (
            &state(body, &daily)["used"],
            &state(body, &daily)["reserved"]
        ),
        (&json!(20), &json!(0))
    );
    app.post(&format!("/v1/reservations/{rsv}/release"), json!({}))
        .await
        .assert_error(409, "conflict");
}

async fn bad_decision_input(app: TestApp) {
    app.post("/v1/limits/consume", json!({"customerId": "b"}))
        .await
        .assert_field_error("missing_required_field", "eventType");
    app.post(
        "/v1/limits/consume",
        json!({"customerId": "b", "eventType": "x", "values": {"t": "1"}}),
    )
    .await
    .assert_field_error("invalid_field_value", "values.t");
    app.post(
        "/v1/reservations",
        json!({"customerId": "b", "eventType": "x"}),
    )
    .await
    .assert_field_error("missing_required_field", "values");
    app.post(
        "/v1/reservations",
        json!({"customerId": "b", "eventType": "x", "values": {"t": 1}, "ttlSeconds": 3601}),
    )
    .await
    .assert_field_error("invalid_field_value", "ttlSeconds");
    app.post(
        "/v1/reservations",
        json!({"customerId": "b", "eventType": "x", "values": {"t": 1}, "ttlSeconds": 0}),
    )
    .await
    .assert_field_error("invalid_field_value", "ttlSeconds");
    // A negative estimate would add room to the limit; refused, and nothing is held.
    let meter = app.tokens_meter().await;
    let id = app
        .limit(json!({"name": "n", "meterId": meter, "limitValue": 100, "period": "day"}))
        .await;
    app.post(
        "/v1/reservations",
        json!({"customerId": "neg1", "eventType": "llm", "values": {"tokens": -1000}}),
    )
    .await
    .assert_field_error("invalid_field_value", "values.tokens");
    let check = app
        .post("/v1/limits/check", json!({"customerId": "neg1"}))
        .await;
    assert_eq!(state(&check.body, &id)["remaining"], 100);
    assert_eq!(
        app.post("/v1/limits/consume", tokens("neg1", 101.0))
            .await
            .body["allowed"],
        false
    );
    let held = app
        .post(
            "/v1/reservations",
            json!({"customerId": "b2", "eventType": "x", "values": {"t": 1}}),
        )
        .await;
    let rsv = held.body["reservation"]["id"].as_str().unwrap().to_string();
    app.post(&format!("/v1/reservations/{rsv}/extend"), json!({}))
        .await
        .assert_field_error("missing_required_field", "ttlSeconds");
    app.post(
        &format!("/v1/reservations/{rsv}/extend"),
        json!({"ttlSeconds": "x"}),
    )
    .await
    .assert_field_error("invalid_field_value", "ttlSeconds");
    app.post(
        &format!("/v1/reservations/{rsv}/commit"),
        json!({"values": {"t": -1e16}}),
    )
    .await
    .assert_field_error("invalid_field_value", "values.t");
    app.post(
        &format!("/v1/reservations/{rsv}/commit"),
        json!({"extra": 1}),
    )
    .await
    .assert_field_error("invalid_field_value", "extra");
    assert_eq!(
        app.get(&format!("/v1/reservations/{rsv}")).await.body["status"],
        "held",
        "bad commits change nothing"
    );
    app.get("/v1/customers/b")
        .await
        .assert_error(404, "customer_not_found");
}

#[tokio::test]
async fn a_single_hold_is_capped_to_a_share_of_the_limit() {
    let mut half = crate::common::settings();
    half.max_hold_fraction = 0.5;
    let app = TestApp::on(
        std::sync::Arc::new(quotagate::storage::memory::MemoryStore::new()),
        half,
    )
    .await;
    let meter = app.tokens_meter().await;
    let id = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 100, "period": "day"}))
        .await;
    let big = app
        .post(
            "/v1/reservations",
            json!({"customerId": "share", "eventType": "llm", "values": {"tokens": 51}}),
        )
        .await;
    assert_eq!(big.assert_status(200)["allowed"], false);
    assert_eq!(
        big.body["retryAfter"],
        Value::Null,
        "waiting never makes the hold fit"
    );
    let fits = app
        .post(
            "/v1/reservations",
            json!({"customerId": "share", "eventType": "llm", "values": {"tokens": 50}}),
        )
        .await;
    assert_eq!(fits.body["allowed"], true);
    assert_eq!(used(&app, "share", &id).await.1, 50);
}

/// A reservation is found by its ID through an owner pointer (a key of its own, outside the
/// customer's slot): the pointer lives as long as the record, through extends and after the
/// end, or the reservation would answer 404 while its record and holds still count.
#[tokio::test]
async fn the_owner_pointer_lives_as_long_as_the_reservation() {
    use crate::common::shared_redis;

    let (app, prefix) = TestApp::redis_with_prefix().await;
    let held = app
        .post(
            "/v1/reservations",
            json!({"customerId": "own", "eventType": "llm", "values": {"tokens": 1}, "ttlSeconds": 60}),
        )
        .await;
    let rsv = held.assert_status(200)["reservation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let server = shared_redis();
    let pttl = |key: String| -> i64 { server.query(::redis::cmd("PTTL").arg(key)) };
    let owner = format!("{prefix}:{{r:{rsv}}}:owner");
    let record = format!("{prefix}:{{c:own}}:rsv:{rsv}");
    let lives_as_long = |what: &str| {
        let (owner_ms, record_ms) = (pttl(owner.clone()), pttl(record.clone()));
        assert!(record_ms > 0, "{what}: record {record_ms}");
        assert!(
            owner_ms >= record_ms - 5_000,
            "{what}: owner {owner_ms} ms, record {record_ms} ms"
        );
    };
    lives_as_long("reserved");
    app.post(
        &format!("/v1/reservations/{rsv}/extend"),
        json!({"ttlSeconds": 3600}),
    )
    .await
    .assert_status(200);
    lives_as_long("extended");
    app.post(&format!("/v1/reservations/{rsv}/commit"), json!({}))
        .await
        .assert_status(200);
    lives_as_long("committed");
}
