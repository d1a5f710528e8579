//! Topic-based subscriptions (Subscriptions R5 Backport IG, STU 1.1) and classic R4
//! criteria subscriptions.
//!
//! - `topics`: the topics the server offers, defined as data.
//! - `request`: the checks of what a client asks for in a `Subscription`, and how its
//!   notifications are to be sent.
//! - `registry`: the live subscriptions of a server, matched against every write.
//! - `outbox`: events recorded in the transaction of the change that caused them, and
//!   the delivery state of each subscription.
//! - `notification`: the notification Bundles.
//! - `delivery`: the workers that send notifications (rest-hook), with retries, leases
//!   shared between server instances, and heartbeats; `bookkeeping` records what they
//!   did, `signing` signs notifications, `retention` prunes what is no longer needed.
//! - `websocket`: the websocket channel (`bind-with-token`).
pub mod audience;
pub mod bookkeeping;
pub mod delivery;
pub mod notification;
pub mod outbox;
pub mod registry;
pub mod request;
pub mod retention;
pub mod signing;
pub mod topics;
pub mod websocket;
