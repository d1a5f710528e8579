//! Topic-based subscriptions (Subscriptions R5 Backport IG, STU 1.1). Being built (issue
//! 4): so far the topics the server will offer, defined as data; neither accepted by
//! `Subscription` nor advertised until delivery works.
pub mod topics;
