//! Record, batch, check, meter query and the event list (API.md §2 query, §3.1, §4, §5.1).

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::common::{TestApp, abandon, gated_post, state};
use crate::every_store;

every_store!(
    aggregations_sum_count_max_latest,
    dimension_filters_on_meters_and_limits,
    customer_limit_overrides_default,
    backdated_events_land_in_their_own_window,
    future_timestamps_are_refused,
    idempotent_replays_count_once,
    changing_limit_value_keeps_usage,
    unknown_customers,
    a_record_whose_client_stopped_waiting_counts_and_creates_its_customer,
    batch_validates_whole_batch_first,
    large_mixed_batches_count_every_event,
    meter_query_with_and_without_dates,
    events_list_pages_newest_first,
    reset_matches_independent_computation,
    deleted_meter_stops_counting,
    bad_metering_input,
);

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn record(app: &TestApp, body: Value) -> Value {
    app.post("/v1/events/record", body)
        .await
        .assert_status(200)
        .clone()
}

async fn check(app: &TestApp, body: Value) -> Value {
    app.post("/v1/limits/check", body)
        .await
        .assert_status(200)
        .clone()
}

fn limit_ids(answer: &Value) -> Vec<String> {
    let mut ids: Vec<String> = answer["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn aggregations_sum_count_max_latest(app: TestApp) {
    let mut limits = Vec::new();
    for (aggregation, field) in [
        ("sum", "values.tokens"),
        ("count", "*"),
        ("max", "values.latency"),
        ("latest", "values.queue"),
    ] {
        let meter = app
            .meter(json!({"name": aggregation, "aggregation": aggregation, "field": field}))
            .await;
        limits.push(
            app.limit(
                json!({"name": aggregation, "meterId": meter, "limitValue": 1000, "period": "day"}),
            )
            .await,
        );
    }
    let now = Utc::now();
    let first = record(&app, json!({"customerId": "agg", "eventType": "llm", "values": {"tokens": 10.5, "latency": 30, "queue": 7}})).await;
    assert_eq!(first["recorded"], true);
    assert_eq!(first["duplicate"], false);
    assert!(first["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(first["limits"].as_array().unwrap().len(), 4);
    // Older event: counts for sum/count/max, but never overwrites a newer `latest`.
    record(&app, json!({"customerId": "agg", "eventType": "llm", "values": {"tokens": 4.5, "latency": 90, "queue": 99},
                        "timestamp": iso(now - Duration::seconds(2))})).await;
    // An event without the fields counts only for count.
    record(&app, json!({"customerId": "agg", "eventType": "llm"})).await;
    let answer = check(&app, json!({"customerId": "agg"})).await;
    assert_eq!(answer["allowed"], true);
    assert_eq!(state(&answer, &limits[0])["used"], 15);
    assert_eq!(state(&answer, &limits[1])["used"], 3);
    assert_eq!(state(&answer, &limits[2])["used"], 90);
    assert_eq!(state(&answer, &limits[3])["used"], 7);
    assert_eq!(state(&answer, &limits[0])["remaining"], 985);
    assert_eq!(state(&answer, &limits[0])["reserved"], 0);
    assert_eq!(state(&answer, &limits[0])["exceeded"], false);
    // A newer latest value replaces the older one.
    record(
        &app,
        json!({"customerId": "agg", "eventType": "llm", "values": {"queue": 3}}),
    )
    .await;
    let answer = check(&app, json!({"customerId": "agg"})).await;
    assert_eq!(state(&answer, &limits[3])["used"], 3);

    // Whole and fractional values mix in one counter and one roll-up, in any order: a whole
    // value added to a fractional sum (and a fraction to a whole one) keeps every digit.
    for tokens in [json!(0.25), json!(2), json!(1000000)] {
        record(
            &app,
            json!({"customerId": "agg", "eventType": "llm", "values": {"tokens": tokens}}),
        )
        .await;
    }
    let answer = check(&app, json!({"customerId": "agg"})).await;
    assert_eq!(state(&answer, &limits[0])["used"], 1000017.25);
    let meter = state(&answer, &limits[0])["meterId"]
        .as_str()
        .unwrap()
        .to_string();
    let total = app
        .post(
            &format!("/v1/meters/{meter}/query"),
            json!({"customerId": "agg"}),
        )
        .await
        .assert_status(200)["value"]
        .clone();
    assert_eq!(total, 1000017.25);
}

async fn dimension_filters_on_meters_and_limits(app: TestApp) {
    let gpt4_meter = app
        .meter(
            json!({"name": "gpt4", "aggregation": "sum", "field": "values.tokens",
                      "eventFilter": {"eventType": "llm", "dimensions": {"model": "gpt-4"}}}),
        )
        .await;
    let all_meter = app.tokens_meter().await;
    let on_gpt4_meter = app
        .limit(json!({"name": "a", "meterId": gpt4_meter, "limitValue": 100, "period": "hour"}))
        .await;
    let eu_only = app.limit(json!({"name": "b", "meterId": all_meter, "limitValue": 100, "period": "hour", "dimensionFilters": {"region": "eu"}})).await;
    let everything = app
        .limit(json!({"name": "c", "meterId": all_meter, "limitValue": 100, "period": "hour"}))
        .await;
    record(&app, json!({"customerId": "dims", "eventType": "llm", "values": {"tokens": 10}, "dimensions": {"model": "gpt-4", "region": "eu"}})).await;
    record(&app, json!({"customerId": "dims", "eventType": "llm", "values": {"tokens": 20}, "dimensions": {"model": "gpt-3", "region": "us"}})).await;
    let recorded = record(&app, json!({"customerId": "dims", "eventType": "img", "values": {"tokens": 40}, "dimensions": {"model": "gpt-4"}})).await;
    assert_eq!(
        limit_ids(&recorded),
        vec![everything.clone()],
        "record lists only the limits it counted toward"
    );

    let all = check(&app, json!({"customerId": "dims"})).await;
    assert_eq!(state(&all, &on_gpt4_meter)["used"], 10);
    assert_eq!(state(&all, &eu_only)["used"], 10);
    assert_eq!(state(&all, &everything)["used"], 70);
    // With dimensions, only limits whose filters those dimensions satisfy are listed.
    let us = check(
        &app,
        json!({"customerId": "dims", "dimensions": {"region": "us", "model": "gpt-3"}}),
    )
    .await;
    assert_eq!(limit_ids(&us), vec![everything.clone()]);
    let mut expected = vec![on_gpt4_meter.clone(), eu_only.clone(), everything.clone()];
    expected.sort();
    let eu = check(
        &app,
        json!({"customerId": "dims", "dimensions": {"region": "eu", "model": "gpt-4"}}),
    )
    .await;
    assert_eq!(limit_ids(&eu), expected);
    // With an event type, only limits whose meter takes that type.
    let img = check(&app, json!({"customerId": "dims", "eventType": "img"})).await;
    let mut expected = vec![eu_only, everything];
    expected.sort();
    assert_eq!(limit_ids(&img), expected);
}

async fn customer_limit_overrides_default(app: TestApp) {
    let meter = app.tokens_meter().await;
    let default = app
        .limit(json!({"name": "default", "meterId": meter, "limitValue": 100, "period": "day"}))
        .await;
    let monthly = app
        .limit(json!({"name": "monthly", "meterId": meter, "limitValue": 1000, "period": "month"}))
        .await;
    let own = app.limit(json!({"name": "vip", "meterId": meter, "limitValue": 500, "period": "day", "customerId": "vip"})).await;
    record(
        &app,
        json!({"customerId": "vip", "eventType": "llm", "values": {"tokens": 150}}),
    )
    .await;
    record(
        &app,
        json!({"customerId": "regular", "eventType": "llm", "values": {"tokens": 150}}),
    )
    .await;
    let vip = check(&app, json!({"customerId": "vip"})).await;
    let mut expected = vec![own.clone(), monthly.clone()];
    expected.sort();
    assert_eq!(
        limit_ids(&vip),
        expected,
        "the override replaces the default with the same identity"
    );
    assert_eq!(vip["allowed"], true);
    assert_eq!(state(&vip, &own)["used"], 150);
    let regular = check(&app, json!({"customerId": "regular"})).await;
    assert_eq!(regular["allowed"], false);
    assert_eq!(state(&regular, &default)["exceeded"], true);
    assert_eq!(state(&regular, &default)["remaining"], 0);
}

async fn backdated_events_land_in_their_own_window(app: TestApp) {
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({"name": "daily", "meterId": meter, "limitValue": 100, "period": "day"}))
        .await;
    let forever = app
        .limit(
            json!({"name": "forever", "meterId": meter, "limitValue": 100, "period": "all_time"}),
        )
        .await;
    let yesterday = Utc::now() - Duration::days(1);
    let recorded = record(&app, json!({"customerId": "late", "eventType": "llm", "values": {"tokens": 30}, "timestamp": iso(yesterday)})).await;
    let landed = state(&recorded, &daily);
    let window_start =
        DateTime::parse_from_rfc3339(landed["windowStart"].as_str().unwrap()).unwrap();
    assert!(
        window_start <= yesterday
            && yesterday
                < DateTime::parse_from_rfc3339(landed["windowEnd"].as_str().unwrap()).unwrap()
    );
    assert_eq!(landed["used"], 30);
    let now = check(&app, json!({"customerId": "late"})).await;
    assert_eq!(
        state(&now, &daily)["used"],
        0,
        "today's window does not see yesterday's event"
    );
    assert_eq!(state(&now, &forever)["used"], 30);
    assert_eq!(state(&now, &forever)["reset"], Value::Null);
    assert_eq!(state(&now, &forever)["windowStart"], Value::Null);
}

async fn future_timestamps_are_refused(app: TestApp) {
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({"name": "daily", "meterId": meter, "limitValue": 100, "period": "all_time"}))
        .await;
    let soon = Utc::now() + Duration::minutes(4);
    record(&app, json!({"customerId": "fut", "eventType": "llm", "values": {"tokens": 1}, "timestamp": iso(soon)})).await;
    let too_far = Utc::now() + Duration::minutes(6);
    app.post("/v1/events/record", json!({"customerId": "fut", "eventType": "llm", "values": {"tokens": 1}, "timestamp": iso(too_far)}))
        .await
        .assert_field_error("invalid_field_value", "timestamp");
    assert_eq!(
        state(&check(&app, json!({"customerId": "fut"})).await, &daily)["used"],
        1
    );
}

async fn idempotent_replays_count_once(app: TestApp) {
    let meter = app.tokens_meter().await;
    let total = app
        .limit(json!({"name": "t", "meterId": meter, "limitValue": 1000, "period": "all_time"}))
        .await;
    let body = json!({"customerId": "idem", "eventType": "llm", "values": {"tokens": 5}, "idempotencyKey": "req-1"});
    let first = app.post("/v1/events/record", body.clone()).await;
    assert_eq!(first.header("idempotent-replayed"), None);
    let second = app.post("/v1/events/record", body).await;
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body["duplicate"], true);
    assert_eq!(
        second.body["id"], first.body["id"],
        "the replay returns the first answer's ID"
    );
    assert_eq!(state(&second.body, &total)["used"], 5);
    // The header and the body field are the same key; the first request wins.
    let request = axum::http::Request::post("/v1/events/record")
        .header(
            "authorization",
            format!("Bearer {}", crate::common::ADMIN_KEY),
        )
        .header("content-type", "application/json")
        .header("idempotency-key", "req-1")
        .body(axum::body::Body::from(
            json!({"customerId": "idem", "eventType": "llm", "values": {"tokens": 500}})
                .to_string(),
        ))
        .unwrap();
    assert_eq!(app.send(request).await.body["duplicate"], true);
    // Keys are scoped per customer.
    let other = record(&app, json!({"customerId": "idem-2", "eventType": "llm", "values": {"tokens": 5}, "idempotencyKey": "req-1"})).await;
    assert_eq!(other["duplicate"], false);
    // Batches de-duplicate too, within the batch and against earlier events.
    let batch = app
        .post("/v1/events/batch", json!({"events": [
            {"customerId": "idem", "eventType": "llm", "values": {"tokens": 5}, "idempotencyKey": "req-1"},
            {"customerId": "idem", "eventType": "llm", "values": {"tokens": 7}, "idempotencyKey": "req-2"},
            {"customerId": "idem", "eventType": "llm", "values": {"tokens": 7}, "idempotencyKey": "req-2"},
        ]}))
        .await;
    assert_eq!(
        batch.assert_status(200),
        &json!({"count": 1, "duplicates": 2})
    );
    assert_eq!(
        state(&check(&app, json!({"customerId": "idem"})).await, &total)["used"],
        12
    );
}

async fn changing_limit_value_keeps_usage(app: TestApp) {
    let meter = app.tokens_meter().await;
    let id = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 10, "period": "day"}))
        .await;
    record(
        &app,
        json!({"customerId": "chg", "eventType": "llm", "values": {"tokens": 12}}),
    )
    .await;
    let before = check(&app, json!({"customerId": "chg"})).await;
    assert_eq!(before["allowed"], false);
    app.put(&format!("/v1/limits/{id}"), json!({"limitValue": 50}))
        .await
        .assert_status(200);
    let after = check(&app, json!({"customerId": "chg"})).await;
    assert_eq!(after["allowed"], true);
    assert_eq!(state(&after, &id)["used"], 12);
    assert_eq!(state(&after, &id)["limit"], 50);
    assert_eq!(state(&after, &id)["remaining"], 38);
}

async fn unknown_customers(app: TestApp) {
    let meter = app.tokens_meter().await;
    let default = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 10, "period": "day"}))
        .await;
    let answer = check(&app, json!({"customerId": "ghost"})).await;
    assert_eq!(answer["allowed"], true);
    assert_eq!(answer["customerId"], "ghost");
    assert_eq!(state(&answer, &default)["used"], 0);
    app.get("/v1/customers/ghost")
        .await
        .assert_error(404, "customer_not_found");
    record(
        &app,
        json!({"customerId": "newbie", "eventType": "llm", "values": {"tokens": 1}}),
    )
    .await;
    let created = app.get("/v1/customers/newbie").await;
    assert_eq!(created.assert_status(200)["timezone"], "UTC");
}

/// Recording creates the customer it meets for the first time, then counts: a client that
/// stops waiting must leave both done, not one.
async fn a_record_whose_client_stopped_waiting_counts_and_creates_its_customer(app: TestApp) {
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 10, "period": "day"}))
        .await;
    let event = json!({"customerId": "walked-away", "eventType": "llm", "values": {"tokens": 3}});
    let abandoned_before = app.abandoned_requests().await;
    abandon(&app, gated_post("/v1/events/record", &event, &[]), async {}).await;
    app.requests_ended().await;
    assert!(
        app.abandoned_requests().await > abandoned_before,
        "counted in /metrics"
    );
    app.get("/v1/customers/walked-away")
        .await
        .assert_status(200);
    let answer = check(&app, json!({"customerId": "walked-away"})).await;
    assert_eq!(state(&answer, &daily)["used"], 3);
}

/// A batch larger than one storage call, mixing customers (one with more events than a call
/// carries), with a replayed idempotency key far from its first use: every event counts once,
/// on its own customer, and the answer says what was recorded.
async fn large_mixed_batches_count_every_event(app: TestApp) {
    let meter = app.tokens_meter().await;
    let total = app
        .limit(json!({"name": "t", "meterId": meter, "limitValue": 1e9, "period": "all_time"}))
        .await;
    let customer_of = |i: usize| {
        if i % 5 < 2 {
            "lb-a".to_string()
        } else {
            format!("lb-{}", i % 5)
        }
    };
    let mut events = Vec::new();
    let mut expected: std::collections::BTreeMap<String, i64> = Default::default();
    for i in 0..100usize {
        let customer = customer_of(i);
        let mut event =
            json!({"customerId": customer, "eventType": "llm", "values": {"tokens": i + 1}});
        // Event 90 replays event 5's key (both lb-a); event 7 uses the same key for lb-2.
        if i == 5 || i == 7 || i == 90 {
            event["idempotencyKey"] = json!("k1");
        }
        if i != 90 {
            *expected.entry(customer).or_default() += i as i64 + 1;
        }
        events.push(event);
    }
    let answer = app
        .post("/v1/events/batch", json!({"events": events}))
        .await;
    assert_eq!(
        answer.assert_status(200),
        &json!({"count": 99, "duplicates": 1})
    );
    for (customer, used) in expected {
        let state_now = check(&app, json!({"customerId": customer})).await;
        assert_eq!(state(&state_now, &total)["used"], used, "{customer}");
    }
}

async fn batch_validates_whole_batch_first(app: TestApp) {
    let meter = app.tokens_meter().await;
    let total = app
        .limit(json!({"name": "t", "meterId": meter, "limitValue": 1000, "period": "all_time"}))
        .await;
    let good = json!({"customerId": "bat", "eventType": "llm", "values": {"tokens": 1}});
    let mut events: Vec<Value> = (0..20).map(|_| good.clone()).collect();
    events[17] = json!({"customerId": "bat", "eventType": "llm", "values": {"tokens": "many"}});
    app.post("/v1/events/batch", json!({"events": events.clone()}))
        .await
        .assert_field_error("invalid_field_value", "events[17].values.tokens");
    events[17] = json!({"customerId": "bat", "eventType": "llm", "values": {"tokens": 1}, "timestamp": iso(Utc::now() + Duration::hours(1))});
    app.post("/v1/events/batch", json!({"events": events.clone()}))
        .await
        .assert_field_error("invalid_field_value", "events[17].timestamp");
    events[17] = json!({"eventType": "llm"});
    app.post("/v1/events/batch", json!({"events": events.clone()}))
        .await
        .assert_field_error("missing_required_field", "events[17].customerId");
    let too_many: Vec<Value> = (0..1001).map(|_| good.clone()).collect();
    app.post("/v1/events/batch", json!({"events": too_many}))
        .await
        .assert_field_error("invalid_field_value", "events");
    // Nothing of the rejected batches counted, nor created the customer.
    assert_eq!(
        state(&check(&app, json!({"customerId": "bat"})).await, &total)["used"],
        0
    );
    app.get("/v1/customers/bat")
        .await
        .assert_error(404, "customer_not_found");
    events[17] = good.clone();
    let answer = app
        .post("/v1/events/batch", json!({"events": events}))
        .await;
    assert_eq!(
        answer.assert_status(200),
        &json!({"count": 20, "duplicates": 0})
    );
    assert_eq!(
        state(&check(&app, json!({"customerId": "bat"})).await, &total)["used"],
        20
    );
    app.get("/v1/customers/bat").await.assert_status(200);
}

async fn meter_query_with_and_without_dates(app: TestApp) {
    let sum = app.tokens_meter().await;
    let max = app
        .meter(json!({"name": "max", "aggregation": "max", "field": "values.tokens"}))
        .await;
    let hour = Utc::now().duration_trunc_hour();
    let two_hours_ago = hour - Duration::hours(2);
    for (customer, tokens, at, model) in [
        ("q1", 10, two_hours_ago + Duration::minutes(5), "a"),
        ("q1", 20, hour, "b"),
        ("q2", 5, hour, "a"),
    ] {
        record(
            &app,
            json!({"customerId": customer, "eventType": "llm", "values": {"tokens": tokens},
                            "dimensions": {"model": model}, "timestamp": iso(at)}),
        )
        .await;
    }
    let query = |meter: &str, body: Value| {
        let path = format!("/v1/meters/{meter}/query");
        let app = &app;
        async move { app.post(&path, body).await.assert_status(200).clone() }
    };
    let all_time = query(&sum, json!({"customerId": "q1"})).await;
    assert_eq!(all_time["value"], 30);
    assert_eq!(all_time["meterName"], "tokens");
    assert_eq!(all_time["aggregation"], "sum");
    assert_eq!(all_time["startDate"], Value::Null);
    assert_eq!(
        query(&sum, json!({})).await["value"],
        35,
        "without customerId: across all customers"
    );
    assert_eq!(
        query(&sum, json!({"dimensions": {"model": "a"}})).await["value"],
        15
    );
    assert_eq!(query(&max, json!({"customerId": "q1"})).await["value"], 20);
    assert_eq!(
        query(&max, json!({"customerId": "nobody"})).await["value"],
        Value::Null
    );
    assert_eq!(
        query(&sum, json!({"customerId": "nobody"})).await["value"],
        0
    );

    // Dates round to the hour: start down, end up; end exclusive.
    let ranged = query(&sum, json!({"customerId": "q1", "startDate": iso(two_hours_ago + Duration::minutes(30)),
                                    "endDate": iso(hour - Duration::minutes(30)), "granularity": "hour"})).await;
    assert_eq!(ranged["value"], 10);
    assert_eq!(ranged["startDate"], iso(two_hours_ago));
    assert_eq!(ranged["endDate"], iso(hour));
    assert_eq!(
        ranged["series"],
        json!([{"start": iso(two_hours_ago), "value": 10}, {"start": iso(two_hours_ago + Duration::hours(1)), "value": 0}])
    );
    let current = query(
        &sum,
        json!({"startDate": iso(hour), "endDate": iso(hour + Duration::minutes(1))}),
    )
    .await;
    assert_eq!(current["value"], 25);
    let max_series = query(&max, json!({"customerId": "q1", "startDate": iso(two_hours_ago), "endDate": iso(hour + Duration::hours(1)), "granularity": "hour"})).await;
    assert_eq!(
        max_series["series"][1]["value"],
        Value::Null,
        "an hour without usage has no max"
    );
    let daily = query(&sum, json!({"startDate": iso(two_hours_ago), "endDate": iso(hour + Duration::hours(1)), "granularity": "day"})).await;
    let days: f64 = daily["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    assert_eq!(days, 35.0);
}

trait TruncHour {
    fn duration_trunc_hour(self) -> DateTime<Utc>;
}

impl TruncHour for DateTime<Utc> {
    fn duration_trunc_hour(self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.timestamp() - self.timestamp().rem_euclid(3600), 0)
            .unwrap()
    }
}

async fn events_list_pages_newest_first(app: TestApp) {
    let base = Utc::now() - Duration::minutes(30);
    for i in 0..5 {
        let event_type = if i % 2 == 0 { "even" } else { "odd" };
        record(&app, json!({"customerId": "log", "eventType": event_type, "values": {"n": i}, "dimensions": {"i": i.to_string()},
                            "properties": {"note": format!("#{i}")}, "timestamp": iso(base + Duration::minutes(i))})).await;
    }
    record(
        &app,
        json!({"customerId": "other-log", "eventType": "even"}),
    )
    .await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/events?customerId=log&limit=2&cursor={c}"),
            None => "/v1/events?customerId=log&limit=2".to_string(),
        };
        let page = app.get(&path).await.assert_status(200).clone();
        for event in page["data"].as_array().unwrap() {
            seen.push(event["values"]["n"].as_i64().unwrap());
            assert_eq!(event["customerId"], "log");
            // Backdated by the caller: received half an hour after it happened.
            let at =
                |field: &str| DateTime::parse_from_rfc3339(event[field].as_str().unwrap()).unwrap();
            assert!(
                at("receivedAt") - at("timestamp") > Duration::minutes(25),
                "{event}"
            );
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => {
                assert_eq!(page["hasMore"], false);
                break;
            }
        }
    }
    assert_eq!(seen, vec![4, 3, 2, 1, 0]);
    // Without a timestamp an event happens when it is received.
    let other = app.get("/v1/events?customerId=other-log").await;
    let other = &other.body["data"][0];
    assert_eq!(other["receivedAt"], other["timestamp"], "{other}");
    let odd = app.get("/v1/events?customerId=log&eventType=odd").await;
    let odd: Vec<i64> = odd.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["values"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(odd, vec![3, 1]);
    let window = app
        .get(
            &format!(
                "/v1/events?customerId=log&startDate={}&endDate={}",
                iso(base + Duration::minutes(1)),
                iso(base + Duration::minutes(3))
            )
            .replace('+', "%2B"),
        )
        .await;
    let window: Vec<i64> = window.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["values"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(window, vec![2, 1], "startDate inclusive, endDate exclusive");
    let one = app.get("/v1/events?customerId=log&limit=1").await;
    assert_eq!(one.body["data"][0]["properties"]["note"], "#4");
    assert_eq!(one.body["data"][0]["dimensions"]["i"], "4");
}

/// Window end (= reset) computed independently from chrono-tz for the period's rule.
fn expected_reset(period: &str, tz: Tz, now: DateTime<Utc>) -> i64 {
    let local = now.with_timezone(&tz);
    let next_local = match period {
        "day" => local
            .date_naive()
            .succ_opt()
            .unwrap()
            .and_time(NaiveTime::MIN),
        "week" => {
            let days = 7 - local.weekday().num_days_from_monday() as i64;
            (local.date_naive() + Duration::days(days)).and_time(NaiveTime::MIN)
        }
        _ => unreachable!(),
    };
    tz.from_local_datetime(&next_local)
        .earliest()
        .unwrap()
        .timestamp()
}

async fn reset_matches_independent_computation(app: TestApp) {
    let meter = app.tokens_meter().await;
    let day = app
        .limit(json!({"name": "day", "meterId": meter, "limitValue": 10, "period": "day"}))
        .await;
    let week = app
        .limit(json!({"name": "week", "meterId": meter, "limitValue": 10, "period": "week"}))
        .await;
    let hour = app
        .limit(json!({"name": "hour", "meterId": meter, "limitValue": 10, "period": "hour"}))
        .await;
    for zone in [
        "Asia/Kolkata",
        "America/New_York",
        "Asia/Kathmandu",
        "Pacific/Auckland",
        "America/Santiago",
    ] {
        let customer = format!("tz-{}", zone.replace('/', "-"));
        app.post("/v1/customers", json!({"id": customer, "timezone": zone}))
            .await
            .assert_status(201);
        let tz: Tz = zone.parse().unwrap();
        let before = Utc::now();
        let answer = check(&app, json!({"customerId": customer})).await;
        let after = Utc::now();
        for (id, period) in [(&day, "day"), (&week, "week")] {
            let reset = state(&answer, id)["reset"].as_i64().unwrap();
            let candidates = [
                expected_reset(period, tz, before),
                expected_reset(period, tz, after),
            ];
            assert!(
                candidates.contains(&reset),
                "{zone} {period}: {reset} not in {candidates:?}"
            );
            assert_eq!(
                state(&answer, id)["windowEnd"],
                iso(Utc.timestamp_opt(reset, 0).unwrap())
            );
        }
        // Hours start where the local clock reads :00 (:30 UTC in Kolkata, :15 in Kathmandu).
        let hour_reset = state(&answer, &hour)["reset"].as_i64().unwrap();
        let local_minute = Utc
            .timestamp_opt(hour_reset, 0)
            .unwrap()
            .with_timezone(&tz)
            .format("%M:%S")
            .to_string();
        assert_eq!(local_minute, "00:00", "{zone}");
    }
}

async fn deleted_meter_stops_counting(app: TestApp) {
    let meter = app.tokens_meter().await;
    app.limit(json!({"name": "d", "meterId": meter, "limitValue": 10, "period": "day"}))
        .await;
    app.delete(&format!("/v1/meters/{meter}"))
        .await
        .assert_status(200);
    let recorded = record(
        &app,
        json!({"customerId": "gone", "eventType": "llm", "values": {"tokens": 1}}),
    )
    .await;
    assert_eq!(recorded["limits"], json!([]));
    assert_eq!(
        check(&app, json!({"customerId": "gone"})).await["limits"],
        json!([])
    );
    app.post(&format!("/v1/meters/{meter}/query"), json!({}))
        .await
        .assert_error(404, "meter_not_found");
}

async fn bad_metering_input(app: TestApp) {
    let meter = app.tokens_meter().await;
    let record_path = "/v1/events/record";
    app.post(record_path, json!({"eventType": "x"}))
        .await
        .assert_field_error("missing_required_field", "customerId");
    app.post(record_path, json!({"customerId": "b"}))
        .await
        .assert_field_error("missing_required_field", "eventType");
    app.post(record_path, json!({"customerId": "b", "eventType": ""}))
        .await
        .assert_field_error("invalid_field_value", "eventType");
    app.post(
        record_path,
        json!({"customerId": "b", "eventType": "x", "values": {"t": 1e16}}),
    )
    .await
    .assert_field_error("invalid_field_value", "values.t");
    app.post(
        record_path,
        json!({"customerId": "b", "eventType": "x", "values": {"a-b": 1}}),
    )
    .await
    .assert_field_error("invalid_field_value", "values.a-b");
    app.post(
        record_path,
        json!({"customerId": "b", "eventType": "x", "dimensions": {"k": 1}}),
    )
    .await
    .assert_field_error("invalid_field_value", "dimensions.k");
    app.post(
        record_path,
        json!({"customerId": "b", "eventType": "x", "timestamp": "yesterday"}),
    )
    .await
    .assert_field_error("invalid_field_value", "timestamp");
    // Before the Unix epoch: windows there would not be RFC 3339 (`-0001-12-31T…`).
    for path in [record_path, "/v1/limits/consume"] {
        for early in ["0000-01-01T00:00:00Z", "1969-12-31T23:59:59.999Z"] {
            let refused = app
                .post(
                    path,
                    json!({"customerId": "b", "eventType": "x", "timestamp": early}),
                )
                .await;
            refused.assert_field_error("invalid_field_value", "timestamp");
            assert!(
                refused.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("1970")
            );
        }
    }
    app.post(
        record_path,
        json!({"customerId": "b", "eventType": "x", "properties": {"p": "x".repeat(17 * 1024)}}),
    )
    .await
    .assert_field_error("invalid_field_value", "properties");
    app.post(
        record_path,
        json!({"customerId": "b", "eventType": "x", "extra": 1}),
    )
    .await
    .assert_field_error("invalid_field_value", "extra");
    app.post(
        "/v1/limits/check",
        json!({"customerId": "b", "dimensions": {"bad key": "v"}}),
    )
    .await
    .assert_field_error("invalid_field_value", "dimensions.bad key");
    app.post("/v1/limits/check", json!({}))
        .await
        .assert_field_error("missing_required_field", "customerId");
    let query = format!("/v1/meters/{meter}/query");
    app.post(&query, json!({"startDate": "soon"}))
        .await
        .assert_field_error("invalid_field_value", "startDate");
    app.post(&query, json!({"startDate": "1969-12-31T00:00:00Z"}))
        .await
        .assert_field_error("invalid_field_value", "startDate");
    app.post(&query, json!({"endDate": "0000-01-01T00:00:00Z"}))
        .await
        .assert_field_error("invalid_field_value", "endDate");
    // A start left to its default (the retention before the end) never goes before 1970.
    let early = app
        .post(&query, json!({"endDate": "1970-01-01T00:30:00Z"}))
        .await;
    assert_eq!(
        early.assert_status(200)["startDate"],
        "1970-01-01T00:00:00.000Z"
    );
    // Dates past chrono's nanosecond range (2262) round to the hour like any other.
    let far = app
        .post(
            &query,
            json!({"startDate": "2300-01-01T00:30:00Z", "endDate": "2300-01-01T05:10:00Z"}),
        )
        .await;
    assert_eq!(
        far.assert_status(200)["startDate"],
        "2300-01-01T00:00:00.000Z"
    );
    assert_eq!(far.body["endDate"], "2300-01-01T06:00:00.000Z");
    // Up to the last hour RFC 3339 can write.
    let last = json!({"startDate": "9999-12-31T22:10:00Z", "endDate": "9999-12-31T23:00:00Z"});
    assert_eq!(
        app.post(&query, last).await.assert_status(200)["endDate"],
        "9999-12-31T23:00:00.000Z"
    );
    app.post(&query, json!({"endDate": "9999-12-31T23:00:01Z"}))
        .await
        .assert_field_error("invalid_field_value", "endDate");
    app.post(&query, json!({"granularity": "week"}))
        .await
        .assert_field_error("invalid_field_value", "granularity");
    app.post(&query, json!({"granularity": "hour"}))
        .await
        .assert_field_error("invalid_field_value", "granularity");
    app.post(
        &query,
        json!({"startDate": "2026-01-02T00:00:00Z", "endDate": "2026-01-01T00:00:00Z"}),
    )
    .await
    .assert_field_error("invalid_field_value", "endDate");
    app.post(
        &query,
        json!({"startDate": "2020-01-01T00:00:00Z", "endDate": "2026-01-01T00:00:00Z"}),
    )
    .await
    .assert_field_error("invalid_field_value", "startDate");
    app.post("/v1/meters/mtr_nope/query", json!({}))
        .await
        .assert_error(404, "meter_not_found");
    app.get("/v1/events")
        .await
        .assert_field_error("missing_required_field", "customerId");
    app.get("/v1/events?customerId=b&cursor=Zm9v")
        .await
        .assert_field_error("invalid_field_value", "cursor");
    app.get("/v1/events?customerId=b&startDate=x")
        .await
        .assert_field_error("invalid_field_value", "startDate");
    // A reversed range is refused, as meter queries refuse one.
    app.get("/v1/events?customerId=b&startDate=2026-12-07T12:00:00Z&endDate=2026-12-07T11:00:00Z")
        .await
        .assert_field_error("invalid_field_value", "endDate");
    app.get("/v1/events?customerId=b&limit=500")
        .await
        .assert_field_error("invalid_field_value", "limit");
    let long_key = axum::http::Request::post(record_path)
        .header(
            "authorization",
            format!("Bearer {}", crate::common::ADMIN_KEY),
        )
        .header("content-type", "application/json")
        .header("idempotency-key", "k".repeat(300))
        .body(axum::body::Body::from(
            json!({"customerId": "b", "eventType": "x"}).to_string(),
        ))
        .unwrap();
    app.send(long_key)
        .await
        .assert_field_error("invalid_field_value", "Idempotency-Key");
    // Nothing above recorded anything or created the customer.
    app.get("/v1/customers/b")
        .await
        .assert_error(404, "customer_not_found");
    assert_eq!(
        app.get("/v1/events?customerId=b").await.body["data"],
        json!([])
    );
}

/// The event log keeps at most `events_per_customer` events, the newest.
async fn event_log_is_capped(app: TestApp) {
    // Enough to make Redis trim the list (it lets it outgrow the cap by an eighth first).
    for i in 0..9 {
        record(
            &app,
            json!({"customerId": "capped", "eventType": "x", "values": {"n": i}}),
        )
        .await;
    }
    let listed = app.get("/v1/events?customerId=capped").await;
    let kept: Vec<i64> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["values"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(kept, vec![8, 7, 6]);
}

fn three_events() -> quotagate::storage::usage::Retention {
    quotagate::storage::usage::Retention {
        events_per_customer: 3,
        ..Default::default()
    }
}

#[tokio::test]
async fn memory_event_log_is_capped() {
    let store = quotagate::storage::memory::MemoryStore::new().with_retention(three_events());
    event_log_is_capped(TestApp::on(std::sync::Arc::new(store), crate::common::settings()).await)
        .await;
}

#[tokio::test]
async fn redis_event_log_is_capped() {
    let url = crate::common::shared_redis().url();
    let conn = quotagate::storage::redis::RedisConnection::connect(
        &url,
        std::time::Duration::from_secs(2),
    )
    .await
    .unwrap();
    let keys = quotagate::storage::keys::Keys::new(&crate::common::unique_prefix());
    let store = quotagate::storage::redis::RedisStore::new(
        conn,
        keys,
        &url,
        std::time::Duration::from_millis(500),
    )
    .with_retention(three_events());
    event_log_is_capped(TestApp::on(std::sync::Arc::new(store), crate::common::settings()).await)
        .await;
}

/// Keys in Redis that must expire do: the event log is kept its retention from the last
/// event (not from the last of an occasional refresh, which let a quiet customer's recent
/// events vanish), and a window counter created by a value too small for `INCRBYFLOAT`'s
/// decimals still gets its window's expiry.
#[tokio::test]
async fn redis_keys_expire_when_they_should() {
    use crate::common::shared_redis;

    let (app, prefix) = TestApp::redis_with_prefix().await;
    let server = shared_redis();
    let pttl = |key: &str| -> i64 { server.query(::redis::cmd("PTTL").arg(key)) };
    let meter = app.tokens_meter().await;
    app.limit(json!({"name": "d", "meterId": meter, "limitValue": 10, "period": "day"}))
        .await;
    let record = |customer: &str, tokens: f64| {
        app.post(
            "/v1/events/record",
            json!({"customerId": customer, "eventType": "llm", "values": {"tokens": tokens}}),
        )
    };
    record("quiet", 1.0).await.assert_status(200);
    // As if the log were about to expire: the next event keeps it its whole retention.
    let log = format!("{prefix}:{{c:quiet}}:events");
    let _: i64 = server.query(::redis::cmd("PEXPIRE").arg(&log).arg(1000));
    record("quiet", 1.0).await.assert_status(200);
    let retention = crate::common::settings().event_retention.as_millis() as i64;
    assert!(pttl(&log) > retention - 60_000, "log PTTL {}", pttl(&log));

    record("tiny", 1e-18).await.assert_status(200);
    let mut counters: Vec<String> =
        server.query(::redis::cmd("KEYS").arg(format!("{prefix}:{{c:tiny}}:u:*")));
    let rollups: Vec<String> =
        server.query(::redis::cmd("KEYS").arg(format!("{prefix}:{{c:tiny}}:h:*")));
    // Hourly roll-ups expire; the all-time one is kept.
    counters.extend(rollups.into_iter().filter(|key| !key.ends_with(":all")));
    assert_eq!(counters.len(), 2, "{counters:?}");
    for counter in &counters {
        let ttl = pttl(counter);
        assert!(ttl > 0, "{counter} expires (PTTL {ttl})");
    }
}
