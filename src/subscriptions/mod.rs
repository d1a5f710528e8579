//! Topic-based subscriptions (Subscriptions R5 Backport IG, STU 1.1). Being built (issue
//! 4). So far: the topics the server offers, defined as data (`topics`); the checks of
//! what a client asks for in a `Subscription`, with the server-owned status (`request`);
//! and the notification Bundles (`notification`). Nothing is delivered yet, and topics are
//! not advertised until delivery works.
pub mod notification;
pub mod request;
pub mod topics;
