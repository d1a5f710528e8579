//! Topic-based subscriptions (Subscriptions R5 Backport IG, STU 1.1). Being built (issue
//! 4): the topics the server offers, defined as data, and the checks of what a client asks
//! for in a `Subscription`; nothing is delivered yet, and topics are not advertised until
//! delivery works.
pub mod request;
pub mod topics;
