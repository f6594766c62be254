//! Idempotency keys on every backend: claimed once, answered, given back,
//! taken over when abandoned or expired; and of two instances claiming one
//! key at once, exactly one wins.

use chrono::{DateTime, Duration, Utc};
use futures::future::join_all;
use service_layer::ports::{Claim, IdempotencyKeys};

use crate::backends::{one_store, two_instances};
use crate::helpers::unique;
use test_support::per_backend;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    a_key_is_claimed_once_answered_and_replayed,
    a_key_given_back_abandoned_or_expired_is_claimed_again,
});

per_backend!(mod across_instances on [memory, postgres] via two_instances {
    of_many_claims_of_one_key_on_two_instances_exactly_one_wins,
});

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_796_000_000 + seconds, 0).expect("a time")
}

/// Claims at `at(now)`, abandoned after 120 s, kept for a day.
async fn claim<K: IdempotencyKeys>(keys: &K, key: &str, fingerprint: &str, now: i64) -> Claim {
    keys.claim(
        key,
        fingerprint,
        at(now),
        at(now) - Duration::seconds(120),
        at(now) - Duration::days(1),
    )
    .await
    .expect("claim")
}

async fn a_key_is_claimed_once_answered_and_replayed<K: IdempotencyKeys>(keys: K) {
    let key = unique("key");
    assert_eq!(claim(&keys, &key, "POST /a x", 0).await, Claim::Claimed);
    assert_eq!(
        claim(&keys, &key, "POST /a x", 1).await,
        Claim::Running {
            fingerprint: "POST /a x".into()
        }
    );
    keys.complete(&key, 202, "{\"ok\":true}")
        .await
        .expect("complete");
    let answered = Claim::Answered {
        fingerprint: "POST /a x".into(),
        status: 202,
        body: "{\"ok\":true}".into(),
    };
    assert_eq!(claim(&keys, &key, "POST /a x", 2).await, answered);
    // Another request with the key learns what the key was used for.
    assert_eq!(claim(&keys, &key, "POST /b y", 3).await, answered);
    keys.abandon(&key).await.expect("abandon");
    assert_eq!(claim(&keys, &key, "POST /a x", 4).await, answered, "kept");
}

async fn a_key_given_back_abandoned_or_expired_is_claimed_again<K: IdempotencyKeys>(keys: K) {
    let key = unique("key");
    assert_eq!(claim(&keys, &key, "f", 0).await, Claim::Claimed);
    keys.abandon(&key).await.expect("abandon");
    assert_eq!(
        claim(&keys, &key, "f", 1).await,
        Claim::Claimed,
        "given back"
    );
    // Its process died: after two minutes the key is free again.
    assert!(matches!(
        claim(&keys, &key, "f", 100).await,
        Claim::Running { .. }
    ));
    assert_eq!(claim(&keys, &key, "g", 122).await, Claim::Claimed);
    keys.complete(&key, 201, "{}").await.expect("complete");
    assert!(matches!(
        claim(&keys, &key, "h", 3_600).await,
        Claim::Answered { .. }
    ));
    assert_eq!(
        claim(&keys, &key, "h", 122 + 86_401).await,
        Claim::Claimed,
        "expired"
    );
}

async fn of_many_claims_of_one_key_on_two_instances_exactly_one_wins<K: IdempotencyKeys>(
    one: K,
    two: K,
) {
    let key = unique("key");
    let claims = (0..20).map(|i| {
        let keys = if i % 2 == 0 { &one } else { &two };
        claim(keys, &key, "f", 0)
    });
    let claims = join_all(claims).await;
    let won = claims.iter().filter(|c| **c == Claim::Claimed).count();
    assert_eq!(won, 1, "{claims:?}");
}
