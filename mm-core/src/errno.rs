//! Kernel error numbers, as the engine's operations return them
//! (include/uapi/asm-generic/errno-base.h, errno.h; x86_64 values).

use thiserror::Error;

/// An errno an mm system call can return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
#[repr(i32)]
pub enum Errno {
    /// Operation not permitted.
    #[error("EPERM: operation not permitted")]
    EPERM = 1,
    /// Interrupted system call.
    #[error("EINTR: interrupted system call")]
    EINTR = 4,
    /// Try again.
    #[error("EAGAIN: try again")]
    EAGAIN = 11,
    /// Out of memory (or: the range is not mapped).
    #[error("ENOMEM: out of memory or range not mapped")]
    ENOMEM = 12,
    /// Permission denied.
    #[error("EACCES: permission denied")]
    EACCES = 13,
    /// Bad address.
    #[error("EFAULT: bad address")]
    EFAULT = 14,
    /// Device or resource busy.
    #[error("EBUSY: device or resource busy")]
    EBUSY = 16,
    /// File exists (MAP_FIXED_NOREPLACE over a mapping).
    #[error("EEXIST: range already mapped")]
    EEXIST = 17,
    /// Bad file descriptor.
    #[error("EBADF: bad file descriptor")]
    EBADF = 9,
    /// No such device.
    #[error("ENODEV: no such device")]
    ENODEV = 19,
    /// Invalid argument.
    #[error("EINVAL: invalid argument")]
    EINVAL = 22,
    /// Value too large.
    #[error("EOVERFLOW: value too large")]
    EOVERFLOW = 75,
    /// Operation not supported.
    #[error("EOPNOTSUPP: operation not supported")]
    EOPNOTSUPP = 95,
}

impl Errno {
    /// The raw errno value.
    pub const fn raw(self) -> i32 {
        self as i32
    }

    /// The errno with this raw value, if the engine knows it.
    pub const fn from_raw(v: i32) -> Option<Self> {
        Some(match v {
            1 => Self::EPERM,
            4 => Self::EINTR,
            9 => Self::EBADF,
            11 => Self::EAGAIN,
            12 => Self::ENOMEM,
            13 => Self::EACCES,
            14 => Self::EFAULT,
            16 => Self::EBUSY,
            17 => Self::EEXIST,
            19 => Self::ENODEV,
            22 => Self::EINVAL,
            75 => Self::EOVERFLOW,
            95 => Self::EOPNOTSUPP,
            _ => return None,
        })
    }

    /// Every errno the engine returns.
    pub const ALL: &'static [Self] = &[
        Self::EPERM,
        Self::EINTR,
        Self::EBADF,
        Self::EAGAIN,
        Self::ENOMEM,
        Self::EACCES,
        Self::EFAULT,
        Self::EBUSY,
        Self::EEXIST,
        Self::ENODEV,
        Self::EINVAL,
        Self::EOVERFLOW,
        Self::EOPNOTSUPP,
    ];

    /// The symbolic name ("EINVAL").
    pub fn name(self) -> &'static str {
        match self {
            Self::EPERM => "EPERM",
            Self::EINTR => "EINTR",
            Self::EBADF => "EBADF",
            Self::EAGAIN => "EAGAIN",
            Self::ENOMEM => "ENOMEM",
            Self::EACCES => "EACCES",
            Self::EFAULT => "EFAULT",
            Self::EBUSY => "EBUSY",
            Self::EEXIST => "EEXIST",
            Self::ENODEV => "ENODEV",
            Self::EINVAL => "EINVAL",
            Self::EOVERFLOW => "EOVERFLOW",
            Self::EOPNOTSUPP => "EOPNOTSUPP",
        }
    }
}

/// Result of an mm operation.
pub type KResult<T> = Result<T, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip() {
        for &e in Errno::ALL {
            assert_eq!(Errno::from_raw(e.raw()), Some(e));
            assert!(e.to_string().starts_with(e.name()));
        }
        assert_eq!(Errno::EINVAL.raw(), libc_einval());
        assert_eq!(Errno::from_raw(9999), None);
    }

    const fn libc_einval() -> i32 {
        22
    }
}
