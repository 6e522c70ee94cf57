//! Compile-fail checks of the errors of `#[remote]` and `#[actor]` (doctests only: this module
//! exists when rustdoc collects tests, never in a build).
//!
//! Each item below holds one misuse that must not compile. The last item holds the same code
//! with every mistake fixed, and it must compile: so a check that fails for another reason (a
//! typo, a missing import) shows up as that item failing, not as a silent pass. The messages
//! themselves are checked by the unit tests of `runtime/macros`.

/// An `async` function.
///
/// ```compile_fail
/// #[rayfork::remote]
/// async fn f() {}
/// fn main() {}
/// ```
pub struct AsyncRemote;

/// A generic function: each remote function needs one registered name.
///
/// ```compile_fail
/// #[rayfork::remote]
/// fn f<T>(x: T) {}
/// fn main() {}
/// ```
pub struct GenericRemote;

/// A borrowed argument.
///
/// ```compile_fail
/// #[rayfork::remote]
/// fn f(x: &str) -> usize { x.len() }
/// fn main() {}
/// ```
pub struct BorrowedArgument;

/// An unknown option.
///
/// ```compile_fail
/// #[rayfork::remote(num_cpu = 1)]
/// fn f() {}
/// fn main() {}
/// ```
pub struct UnknownOption;

/// An option without a value (only `streaming` is a bare word).
///
/// ```compile_fail
/// #[rayfork::remote(num_cpus)]
/// fn f() {}
/// fn main() {}
/// ```
pub struct BareOption;

/// `num_returns = 0`.
///
/// ```compile_fail
/// #[rayfork::remote(num_returns = 0)]
/// fn f() -> u8 { 1 }
/// fn main() {}
/// ```
pub struct ZeroReturns;

/// `num_returns = 2` on a function that does not return a 2-tuple.
///
/// ```compile_fail
/// #[rayfork::remote(num_returns = 2)]
/// fn f() -> (u8, u8, u8) { (1, 2, 3) }
/// fn main() {}
/// ```
pub struct ReturnsNotATuple;

/// A `name` that is not a string literal.
///
/// ```compile_fail
/// #[rayfork::remote(name = 3)]
/// fn f() {}
/// fn main() {}
/// ```
pub struct NameNotAString;

/// `resources` that is not a list of pairs.
///
/// ```compile_fail
/// #[rayfork::remote(resources = ("db", 1.0))]
/// fn f() {}
/// fn main() {}
/// ```
pub struct ResourcesNotAList;

/// A streaming function that does not return an iterator.
///
/// ```compile_fail
/// #[rayfork::remote(streaming)]
/// fn f() -> Vec<u8> { vec![1] }
/// fn main() {}
/// ```
pub struct StreamingWithoutIterator;

/// `#[actor]` with options.
///
/// ```compile_fail
/// struct Counter(u64);
/// #[rayfork::actor(max_restarts = 1)]
/// impl Counter {
///     fn new() -> Self { Counter(0) }
/// }
/// fn main() {}
/// ```
pub struct ActorWithOptions;

/// `#[actor]` on a trait impl.
///
/// ```compile_fail
/// struct Counter(u64);
/// #[rayfork::actor]
/// impl Default for Counter {
///     fn default() -> Self { Counter(0) }
/// }
/// fn main() {}
/// ```
pub struct ActorOnTraitImpl;

/// An actor without a constructor.
///
/// ```compile_fail
/// struct Counter(u64);
/// #[rayfork::actor]
/// impl Counter {
///     pub fn get(&self) -> u64 { self.0 }
/// }
/// fn main() {}
/// ```
pub struct ActorWithoutNew;

/// An actor method with a borrowed argument.
///
/// ```compile_fail
/// struct Counter(u64);
/// #[rayfork::actor]
/// impl Counter {
///     fn new() -> Self { Counter(0) }
///     pub fn add(&mut self, by: &u64) -> u64 { self.0 += by; self.0 }
/// }
/// fn main() {}
/// ```
pub struct ActorBorrowedArgument;

/// An actor constructor that returns neither `Self` nor `Result<Self, E>`.
///
/// ```compile_fail
/// struct Counter(u64);
/// #[rayfork::actor]
/// impl Counter {
///     fn new() -> Option<Self> { Some(Counter(0)) }
///     pub fn get(&self) -> u64 { self.0 }
/// }
/// fn main() {}
/// ```
pub struct ActorNewReturnsOption;

/// An async actor method (it used to be skipped silently).
///
/// ```compile_fail
/// struct Counter(u64);
/// #[rayfork::actor]
/// impl Counter {
///     fn new() -> Self { Counter(0) }
///     pub async fn get(&self) -> u64 { self.0 }
/// }
/// fn main() {}
/// ```
pub struct ActorAsyncMethod;

/// A private method is a helper of the state, not a method of the actor's handle.
///
/// ```compile_fail
/// struct Counter(u64);
/// #[rayfork::actor]
/// impl Counter {
///     fn new() -> Self { Counter(0) }
///     fn bump(&mut self) -> u64 { self.0 += 1; self.0 }
/// }
/// fn main() {
///     let _rt = rayfork::Runtime::builder().start().unwrap();
///     let c = Counter::remote();
///     let _ = c.bump();
/// }
/// ```
pub struct ActorPrivateMethod;

/// Every misuse above, fixed: this compiles.
///
/// ```no_run
/// #[rayfork::remote]
/// fn not_async() {}
/// #[rayfork::remote]
/// fn not_generic(x: u64) {}
/// #[rayfork::remote]
/// fn owned(x: String) -> usize { x.len() }
/// #[rayfork::remote(num_cpus = 1)]
/// fn known_option() {}
/// #[rayfork::remote(num_returns = 1)]
/// fn one_return() -> u8 { 1 }
/// #[rayfork::remote(num_returns = 3)]
/// fn three_returns() -> (u8, u8, u8) { (1, 2, 3) }
/// #[rayfork::remote(name = "named")]
/// fn named() {}
/// #[rayfork::remote(resources = [("db", 1.0)])]
/// fn with_resources() {}
/// #[rayfork::remote(streaming)]
/// fn streaming() -> impl Iterator<Item = u8> { vec![1].into_iter() }
///
/// struct Counter(u64);
/// #[rayfork::actor]
/// impl Counter {
///     fn new() -> Self { Counter(0) }
///     pub fn get(&self) -> u64 { self.0 }
///     pub fn add(&mut self, by: u64) -> u64 { self.0 += by; self.0 }
/// }
/// struct Bounded(u64);
/// #[rayfork::actor]
/// impl Bounded {
///     fn new(n: u64) -> Result<Self, String> { Ok(Bounded(n)) }
///     pub fn get(&self) -> u64 { self.0 }
///     // Private: a helper, free to be async or generic.
///     async fn refresh(&mut self) {}
///     fn scale<T: Into<u64>>(&self, by: T) -> u64 { self.0 * by.into() }
/// }
/// fn main() {}
/// ```
pub struct AllFixed;
