//! Load generator behind `ringmq bench`.
