//! The numbers callers hold, each its own type so one cannot be passed for another (a
//! fencing token where a lease id is expected compiles to nothing but a bug).

use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id! {
    /// A lease, unique for the life of the coordinator's state (never reused).
    LeaseId
}

id! {
    /// What a holder sends with every write to a fenced resource: it grows with every
    /// grant of a pool, so a write carrying an older one is from a holder that lost its
    /// lease.
    FencingToken
}

id! {
    /// A request submitted to a request queue, unique within the queue.
    RequestId
}
