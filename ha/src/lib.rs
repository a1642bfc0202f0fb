//! ringmq-ha: active-passive high availability, with no IO and no clock.

pub mod broker_state;
pub mod epoch;
pub mod limits;
pub mod replication_level;
pub mod url;
