//! ringmq client.
