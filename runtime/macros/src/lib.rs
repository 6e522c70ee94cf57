//! The `#[remote]` attribute of rayfork (use it as `rayfork::remote`).
//!
//! Owns code generation only: the registry entry, `f::remote`, `f::options`. What the
//! generated code calls lives in `rayfork::__private`.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Expr, FnArg, GenericArgument, ItemFn, Lit, Meta, PathArguments, ReturnType, Token, Type,
};

/// Makes a free function a remote function: `f::remote(args..)` submits it as a task and
/// returns an `ObjectRef` of its result; `f::options()` sets per-call options.
///
/// Attribute options: `num_cpus = 0.5`, `num_gpus = 1`, `resources = [("db", 1.0)]`,
/// `max_retries = 0`, `max_calls = 1`, `name = "..."`, `retry_exceptions = true`, and
/// `num_returns = N`: a function returning an N-tuple (or `Result` of one) then gives N refs,
/// one per element, from `f::remote(..)`.
///
/// Arguments and the result must be serde types (owned). A function returning `Result<T, E>`
/// (with `E: Display`) gives refs of `T`; `Err(e)` becomes `rayfork::Error::TaskFailed`.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

struct Attrs {
    options: Vec<proc_macro2::TokenStream>,
    /// `streaming`: a generator (its `remote` gives an `ObjectRefGenerator`).
    streaming: bool,
    /// `num_returns = N` with N >= 2 (None: the result is one object).
    num_returns: Option<(usize, Span)>,
}

fn parse_attrs(attr: proc_macro2::TokenStream) -> syn::Result<Attrs> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut options = Vec::new();
    let mut num_returns = None;
    let mut streaming = false;
    for m in metas {
        if let Meta::Path(path) = &m {
            if path.is_ident("streaming") {
                streaming = true;
                options.insert(0, quote!(.__streaming()));
                continue;
            }
        }
        let Meta::NameValue(nv) = &m else {
            return Err(syn::Error::new_spanned(m, "expected `key = value`"));
        };
        let key = nv
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        let v = &nv.value;
        match key.as_str() {
            "num_cpus" => options.push(quote!(.num_cpus((#v) as f64))),
            "num_gpus" => options.push(quote!(.num_gpus((#v) as f64))),
            "max_retries" => options.push(quote!(.max_retries(#v))),
            "max_calls" => options.push(quote!(.max_calls(#v))),
            "resources" => {
                let err = || {
                    syn::Error::new_spanned(
                        v,
                        "resources must be a list of (name, amount) pairs: \
                         resources = [(\"db\", 1.0)]",
                    )
                };
                let Expr::Array(list) = v else {
                    return Err(err());
                };
                for e in &list.elems {
                    let Expr::Tuple(t) = e else { return Err(err()) };
                    if t.elems.len() != 2 {
                        return Err(err());
                    }
                    let (name, amount) = (&t.elems[0], &t.elems[1]);
                    options.push(quote!(.resource(#name, (#amount) as f64)));
                }
            }
            "num_returns" => {
                let n = match v {
                    Expr::Lit(l) => match &l.lit {
                        Lit::Int(i) => i.base10_parse::<usize>()?,
                        _ => 0,
                    },
                    _ => 0,
                };
                if n == 0 {
                    return Err(syn::Error::new_spanned(
                        v,
                        "num_returns must be an integer literal of at least 1",
                    ));
                }
                if n > 1 {
                    num_returns = Some((n, v.span()));
                }
            }
            "retry_exceptions" => options.push(quote!(.retry_exceptions(#v))),
            "enable_task_events" => options.push(quote!(.enable_task_events(#v))),
            "name" => {
                if !matches!(v, Expr::Lit(l) if matches!(l.lit, Lit::Str(_))) {
                    return Err(syn::Error::new_spanned(v, "name must be a string literal"));
                }
                options.push(quote!(.name(#v)))
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    &nv.path,
                    "unknown option; expected streaming, num_cpus, num_gpus, resources, \
                     max_retries, max_calls, num_returns, retry_exceptions, \
                     enable_task_events or name",
                ));
            }
        }
    }
    Ok(Attrs {
        options,
        num_returns,
        streaming,
    })
}

/// `T` of `impl Iterator<Item = T>`.
fn iterator_item(ty: &Type) -> Option<Type> {
    let Type::ImplTrait(it) = ty else { return None };
    it.bounds.iter().find_map(|b| {
        let syn::TypeParamBound::Trait(t) = b else {
            return None;
        };
        let last = t.path.segments.last()?;
        if last.ident != "Iterator" {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &last.arguments else {
            return None;
        };
        args.args.iter().find_map(|a| match a {
            GenericArgument::AssocType(at) if at.ident == "Item" => Some(at.ty.clone()),
            _ => None,
        })
    })
}

/// The element types of a tuple type with exactly `n` elements.
fn tuple_elems(ty: &Type, n: usize) -> Option<Vec<Type>> {
    match ty {
        Type::Tuple(t) if t.elems.len() == n => Some(t.elems.iter().cloned().collect()),
        Type::Paren(p) => tuple_elems(&p.elem, n),
        _ => None,
    }
}

/// If `ty` is `Result<T, ..>` (any path ending in `Result` with generic arguments), its `T`.
/// The call that encodes a task's result: `finish`, or for a `Result` the fallible one, with
/// a closure that describes the error where its type is concrete (so a `Serialize` error
/// travels as a value, see `rayfork::__private::ErrWrap`).
fn finish_call(
    p: &proc_macro2::TokenStream,
    fallible: bool,
    value: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    if fallible {
        quote!(#p::finish_result(&inv, #value, |__e| {
            #[allow(unused_imports)]
            use #p::{ErrDisplay as _, ErrSerialize as _};
            (&#p::ErrWrap(__e)).describe()
        }))
    } else {
        quote!(#p::finish(&inv, #value))
    }
}

fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    }
}

fn expand(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let attrs = parse_attrs(attr)?;
    let func: ItemFn = syn::parse2(item)?;
    let sig = &func.sig;
    if sig.asyncness.is_some() {
        return Err(syn::Error::new_spanned(
            sig.asyncness,
            "remote functions cannot be async",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "remote functions cannot be generic: each needs one registered name",
        ));
    }
    let name = &sig.ident;
    let vis = &func.vis;
    let mut arg_tys = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    "remote functions take no `self`",
                ));
            }
            FnArg::Typed(pt) => {
                if matches!(*pt.ty, Type::Reference(_) | Type::ImplTrait(_)) {
                    return Err(syn::Error::new_spanned(
                        &pt.ty,
                        "remote function arguments must be owned serde types",
                    ));
                }
                arg_tys.push((*pt.ty).clone());
            }
        }
    }
    let n = arg_tys.len();
    let args: Vec<_> = (0..n).map(|i| format_ident!("arg{}", i)).collect();
    let idx: Vec<_> = (0..n).collect();
    let (out_ty, fallible) = match &sig.output {
        ReturnType::Default => (quote!(()), false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (quote!(#ok), true),
            None => (quote!(#ty), false),
        },
    };
    // `num_returns = N`: N refs, one per element of the returned tuple (rule 5 in protocol.rs).
    let multi = match attrs.num_returns {
        None => None,
        Some((n, span)) => {
            let ty = match &sig.output {
                ReturnType::Type(_, ty) => Some(ty.as_ref()),
                ReturnType::Default => None,
            };
            let elems = ty.and_then(|ty| {
                let fallible = result_ok_type(ty);
                tuple_elems(fallible.unwrap_or(ty), n).map(|e| (e, fallible.is_some()))
            });
            match elems {
                Some(e) => Some(e),
                None => {
                    return Err(syn::Error::new(
                        span,
                        format!(
                            "num_returns = {n} needs a function returning a {n}-tuple \
                             (or a Result of one)"
                        ),
                    ));
                }
            }
        }
    };
    let options = &attrs.options;
    let p = quote!(::rayfork::__private);
    // What `remote` returns, how it submits, and how `__invoke` encodes the result.
    let (ret_ty, submit_call, finish_call) = match &multi {
        None if attrs.streaming => {
            let item = match &sig.output {
                ReturnType::Type(_, ty) => iterator_item(ty),
                ReturnType::Default => None,
            };
            let Some(item) = item else {
                return Err(syn::Error::new_spanned(
                    &sig.output,
                    "a streaming function returns `impl Iterator<Item = T>`",
                ));
            };
            (
                quote!(::rayfork::ObjectRefGenerator<#item>),
                quote! {
                    #p::submit_stream(NAME, &self.0, move |_cx| {
                        Ok(vec![#(::rayfork::IntoArg::<#arg_tys>::into_arg(#args, _cx)?),*])
                    })
                },
                quote!(#p::finish_stream(&inv, #name(#(#args),*))),
            )
        }
        None => (
            quote!(::rayfork::ObjectRef<#out_ty>),
            quote! {
                #p::submit(NAME, &self.0, move |_cx| {
                    Ok(vec![#(::rayfork::IntoArg::<#arg_tys>::into_arg(#args, _cx)?),*])
                })
            },
            finish_call(&p, fallible, quote!(#name(#(#args),*))),
        ),
        Some((elems, fallible)) => {
            let k = elems.len();
            let vals: Vec<_> = (0..k).map(|i| format_ident!("__v{}", i)).collect();
            let nexts = (0..k).map(|_| quote!(__r.next()));
            let result = if *fallible {
                quote!(#name(#(#args),*))
            } else {
                quote!(::core::result::Result::<_, ::core::convert::Infallible>::Ok(
                    #name(#(#args),*)
                ))
            };
            (
                quote!((#(::rayfork::ObjectRef<#elems>),*)),
                quote! {
                    let mut __r = #p::submit_many(NAME, &self.0, #k, move |_cx| {
                        Ok(vec![#(::rayfork::IntoArg::<#arg_tys>::into_arg(#args, _cx)?),*])
                    });
                    (#(#nexts),*)
                },
                quote! {
                    #p::finish_many(
                        &inv,
                        #result.map(|(#(#vals),*)| vec![#(#p::encode_part(&#vals)),*]),
                    )
                },
            )
        }
    };
    let doc =
        format!("Remote glue of [`{name}`](fn@{name}): `{name}::remote(..)` submits it as a task.");
    let span = Span::call_site();
    let name_str = syn::LitStr::new(&name.to_string(), span);
    let invoke = format_ident!("__rayfork_invoke_{}", name);
    let entry = format_ident!("__RAYFORK_ENTRY_{}", name);
    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(non_snake_case, clippy::too_many_arguments, clippy::unused_unit)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The name this function is registered under.
            pub const NAME: &str = concat!(module_path!(), "::", #name_str);

            fn __default_options() -> ::rayfork::TaskOptions {
                ::rayfork::TaskOptions::default() #(#options)*
            }

            /// Submits a call with the default options; returns a ref to the result (one ref
            /// per element with `num_returns`).
            pub fn remote(#(#args: impl ::rayfork::IntoArg<#arg_tys>),*) -> #ret_ty {
                options().remote(#(#args),*)
            }

            /// Options for one call: `options().max_retries(1).remote(..)`.
            pub fn options() -> Options {
                Options(__default_options())
            }

            /// Per-call options of this function.
            #[derive(Debug, Clone)]
            pub struct Options(::rayfork::TaskOptions);

            impl Options {
                // Every setter of `TaskOptions`, as `Self(self.0.setter(..))`.
                #p::task_option_setters!(forward);

                /// Submits a call with these options; returns a ref to the result (one ref
                /// per element with `num_returns`).
                pub fn remote(self, #(#args: impl ::rayfork::IntoArg<#arg_tys>),*) -> #ret_ty {
                    #submit_call
                }
            }
        }

        // Next to the function, not in its module, so that it also works where `super` does
        // not reach the function (a `#[remote]` in a function body, e.g. a test).
        #[doc(hidden)]
        #[allow(non_snake_case)]
        fn #invoke(inv: #p::Invocation<'_>) -> #p::Outcome {
            if let Err(e) = #p::check_arity(&inv, #n) {
                return #p::arg_error(e);
            }
            #(
                let #args: #arg_tys = match #p::decode_arg(&inv, #idx) {
                    Ok(v) => v,
                    Err(e) => return #p::arg_error(e),
                };
            )*
            #finish_call
        }

        #[#p::linkme::distributed_slice(#p::REMOTE_FNS)]
        #[linkme(crate = #p::linkme)]
        #[allow(non_upper_case_globals)]
        static #entry: #p::RemoteFn = #p::RemoteFn {
            // The same string as the module's `NAME` (`module_path!()` there ends in `::#name`).
            name: concat!(module_path!(), "::", #name_str, "::", #name_str),
            call: #invoke,
        };
    })
}

/// Makes the methods of an `impl` block an actor (Ray's actors): `T::remote(args..)` starts a
/// worker process of its own that runs `T::new(args..)` and returns an
/// `rayfork::ActorHandle<T>`; each `&self`/`&mut self` method becomes a method of the handle
/// (through the generated trait `TActor`) that submits the call and returns an `ObjectRef`
/// of its result. Calls run one at a time, in submission order. `T::options()` gives
/// `max_restarts` and `name`.
///
/// The block must have `fn new(..) -> Self` (or `-> T`, or `-> Result<Self, E>`: an `Err`
/// fails the actor, and every call on it, with E's message). Arguments and results follow the
/// rules of `#[remote]`. Its visible methods (`pub fn m(&self..)`, `pub(crate)`, ...) become
/// the actor's and cannot be async or generic; private methods and other associated functions
/// are left as they are (helpers of the state).
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            Span::call_site(),
            "#[actor] takes no options; use T::options()",
        )
        .to_compile_error()
        .into();
    }
    match expand_actor(item.into()) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The typed arguments of a signature (after any receiver), or an error for borrowed ones.
fn owned_args(sig: &syn::Signature) -> syn::Result<Vec<Type>> {
    let mut tys = Vec::new();
    for input in &sig.inputs {
        if let FnArg::Typed(pt) = input {
            if matches!(*pt.ty, Type::Reference(_) | Type::ImplTrait(_)) {
                return Err(syn::Error::new_spanned(
                    &pt.ty,
                    "actor method arguments must be owned serde types",
                ));
            }
            tys.push((*pt.ty).clone());
        }
    }
    Ok(tys)
}

fn expand_actor(item: proc_macro2::TokenStream) -> syn::Result<proc_macro2::TokenStream> {
    let block: syn::ItemImpl = syn::parse2(item)?;
    if block.trait_.is_some() || !block.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &block.self_ty,
            "#[actor] goes on an inherent, non-generic impl block",
        ));
    }
    let ty = &block.self_ty;
    let Type::Path(tp) = &**ty else {
        return Err(syn::Error::new_spanned(ty, "expected a named type"));
    };
    let base = &tp.path.segments.last().expect("a path has a segment").ident;
    let module = format_ident!("__rayfork_actor_{}", base);
    let opts_ty = format_ident!("{}Options", base);
    let trait_ty = format_ident!("{}Actor", base);
    let p = quote!(::rayfork::__private);

    let mut ctor = None;
    let mut methods = Vec::new();
    for it in &block.items {
        let syn::ImplItem::Fn(f) = it else { continue };
        let sig = &f.sig;
        // Only methods the type shows (`pub`, `pub(crate)`, ...) are the actor's; private ones
        // stay helpers of its state.
        let shown = !matches!(f.vis, syn::Visibility::Inherited);
        let method = shown
            && matches!(sig.inputs.first(), Some(FnArg::Receiver(r)) if r.reference.is_some());
        if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
            if method || sig.ident == "new" {
                let what = if sig.asyncness.is_some() {
                    "async"
                } else {
                    "generic"
                };
                return Err(syn::Error::new_spanned(
                    &sig.ident,
                    format!(
                        "an actor method cannot be {what}: each call runs to its end on the \
                         actor's worker with concrete argument types; make it a plain `fn`, or \
                         move it to an impl block without #[actor]"
                    ),
                ));
            }
            continue;
        }
        match sig.inputs.first() {
            Some(FnArg::Receiver(_)) if method => methods.push(sig.clone()),
            Some(FnArg::Receiver(_)) => {}
            _ if sig.ident == "new" => ctor = Some(sig.clone()),
            _ => {}
        }
    }
    let Some(ctor) = ctor else {
        return Err(syn::Error::new_spanned(
            ty,
            "an actor needs a constructor `fn new(..) -> Self` in this impl block",
        ));
    };

    // `new` returns the actor, or `Result` of it (an `Err` fails the actor with its message).
    let is_self = |t: &Type| match t {
        Type::Path(tp) => {
            tp.path.is_ident("Self") || tp.path.segments.last().is_some_and(|s| s.ident == *base)
        }
        _ => false,
    };
    let store = match &ctor.output {
        ReturnType::Type(_, t) if is_self(t) => quote!(actor_store),
        ReturnType::Type(_, t) if result_ok_type(t).is_some_and(is_self) => {
            quote!(actor_store_result)
        }
        _ => {
            return Err(syn::Error::new_spanned(
                &ctor.output,
                "an actor's `fn new` must return `Self` or `Result<Self, E>` (an `Err` fails the \
                 actor with E's message)",
            ));
        }
    };
    let ctor_tys = owned_args(&ctor)?;
    let cn = ctor_tys.len();
    let cargs: Vec<_> = (0..cn).map(|i| format_ident!("arg{}", i)).collect();
    let cidx: Vec<_> = (0..cn).collect();

    let mut entries = Vec::new();
    let mut trait_fns = Vec::new();
    let mut trait_impls = Vec::new();
    for m in &methods {
        let name = &m.ident;
        let tys = owned_args(m)?;
        let n = tys.len();
        let args: Vec<_> = (0..n).map(|i| format_ident!("arg{}", i)).collect();
        let idx: Vec<_> = (1..=n).collect();
        let (out_ty, fallible) = match &m.output {
            ReturnType::Default => (quote!(()), false),
            ReturnType::Type(_, t) => match result_ok_type(t) {
                Some(ok) => (quote!(#ok), true),
                None => (quote!(#t), false),
            },
        };
        let finish_out = finish_call(&p, fallible, quote!(out));
        let konst = format_ident!("M_{}", name);
        let invoke = format_ident!("__invoke_{}", name);
        let entry = format_ident!("__ENTRY_{}", name);
        let name_str = syn::LitStr::new(&name.to_string(), Span::call_site());
        entries.push(quote! {
            pub const #konst: &str = concat!(module_path!(), "::", #name_str);
            fn #invoke(inv: #p::Invocation<'_>) -> #p::Outcome {
                if let Err(e) = #p::check_arity(&inv, #n + 1) {
                    return #p::arg_error(e);
                }
                #(
                    let #args: #tys = match #p::decode_arg(&inv, #idx) {
                        Ok(v) => v,
                        Err(e) => return #p::arg_error(e),
                    };
                )*
                match #p::actor_state::<#ty, _>(&inv, |s| s.#name(#(#args),*)) {
                    Ok(out) => #finish_out,
                    Err(e) => #p::arg_error(e),
                }
            }
            #[#p::linkme::distributed_slice(#p::REMOTE_FNS)]
            #[linkme(crate = #p::linkme)]
            static #entry: #p::RemoteFn = #p::RemoteFn { name: #konst, call: #invoke };
        });
        let doc = format!("Submits a call of [`{base}::{name}`] to the actor.");
        trait_fns.push(quote! {
            #[doc = #doc]
            fn #name(&self, #(#args: impl ::rayfork::IntoArg<#tys>),*) -> ::rayfork::ObjectRef<#out_ty>;
        });
        trait_impls.push(quote! {
            fn #name(&self, #(#args: impl ::rayfork::IntoArg<#tys>),*) -> ::rayfork::ObjectRef<#out_ty> {
                self.__call(#module::#konst, move |_cx| {
                    Ok(vec![#(::rayfork::IntoArg::<#tys>::into_arg(#args, _cx)?),*])
                })
            }
        });
    }
    let opts_doc =
        format!("Options of a [`{base}`] actor: `{base}::options().max_restarts(1).remote(..)`.");
    let trait_doc =
        format!("The methods of a [`{base}`] actor on its handle; import it where you call them.");
    Ok(quote! {
        #block

        #[doc(hidden)]
        #[allow(non_snake_case, non_upper_case_globals, clippy::unused_unit)]
        mod #module {
            #[allow(unused_imports)]
            use super::*;

            pub const NEW: &str = concat!(module_path!(), "::new");
            fn __invoke_new(inv: #p::Invocation<'_>) -> #p::Outcome {
                if let Err(e) = #p::check_arity(&inv, #cn) {
                    return #p::arg_error(e);
                }
                #(
                    let #cargs: #ctor_tys = match #p::decode_arg(&inv, #cidx) {
                        Ok(v) => v,
                        Err(e) => return #p::arg_error(e),
                    };
                )*
                #p::#store(&inv, <#ty>::new(#(#cargs),*))
            }
            #[#p::linkme::distributed_slice(#p::REMOTE_FNS)]
            #[linkme(crate = #p::linkme)]
            static __ENTRY_NEW: #p::RemoteFn = #p::RemoteFn { name: NEW, call: __invoke_new };

            #(#entries)*
        }

        #[doc = #opts_doc]
        #[derive(Debug, Clone, Default)]
        pub struct #opts_ty(::rayfork::ActorOptions);

        #[allow(clippy::too_many_arguments)]
        impl #opts_ty {
            /// See [`rayfork::ActorOptions::max_restarts`].
            pub fn max_restarts(self, n: u32) -> Self { #opts_ty(self.0.max_restarts(n)) }
            /// See [`rayfork::ActorOptions::max_task_retries`].
            pub fn max_task_retries(self, n: u32) -> Self { #opts_ty(self.0.max_task_retries(n)) }
            /// See [`rayfork::ActorOptions::name`].
            pub fn name(self, name: impl Into<String>) -> Self { #opts_ty(self.0.name(name)) }
            /// Starts the actor with these options.
            pub fn remote(self, #(#cargs: impl ::rayfork::IntoArg<#ctor_tys>),*) -> ::rayfork::ActorHandle<#ty> {
                self.0.__create(#module::NEW, move |_cx| {
                    Ok(vec![#(::rayfork::IntoArg::<#ctor_tys>::into_arg(#cargs, _cx)?),*])
                })
            }
        }

        #[allow(clippy::too_many_arguments)]
        impl #ty {
            /// Starts the actor in a worker process of its own (runs `new` there).
            pub fn remote(#(#cargs: impl ::rayfork::IntoArg<#ctor_tys>),*) -> ::rayfork::ActorHandle<#ty> {
                #opts_ty::default().remote(#(#cargs),*)
            }
            /// Options for starting the actor.
            pub fn options() -> #opts_ty {
                #opts_ty::default()
            }
        }

        impl ::rayfork::ActorClass for #ty {
            const CLASS: &'static str = #module::NEW;
        }

        #[doc = #trait_doc]
        #[allow(clippy::too_many_arguments)]
        pub trait #trait_ty {
            #(#trait_fns)*
        }

        #[allow(clippy::too_many_arguments)]
        impl #trait_ty for ::rayfork::ActorHandle<#ty> {
            #(#trait_impls)*
        }
    })
}

#[cfg(test)]
mod tests {
    //! The error of each misuse, as the user reads it. (That each really fails to compile, and
    //! that the fixed code compiles, is checked by the doctests of `rayfork::macro_checks`.)

    use super::{expand, expand_actor};
    use quote::quote;

    fn remote_error(attr: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> String {
        match expand(attr, item) {
            Ok(_) => panic!("expanded without an error"),
            Err(e) => e.to_string(),
        }
    }

    fn actor_error(item: proc_macro2::TokenStream) -> String {
        match expand_actor(item) {
            Ok(_) => panic!("expanded without an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn remote_misuses_say_what_is_wrong() {
        let cases = [
            (
                quote!(),
                quote!(
                    async fn f() {}
                ),
                "cannot be async",
            ),
            (
                quote!(),
                quote!(
                    fn f<T>(x: T) {}
                ),
                "cannot be generic",
            ),
            (
                quote!(),
                quote!(
                    fn f(x: &str) {}
                ),
                "must be owned serde types",
            ),
            (
                quote!(num_cpu = 1),
                quote!(
                    fn f() {}
                ),
                "unknown option",
            ),
            (
                quote!(num_cpus),
                quote!(
                    fn f() {}
                ),
                "expected `key = value`",
            ),
            (
                quote!(num_returns = 0),
                quote!(
                    fn f() -> u8 {
                        1
                    }
                ),
                "at least 1",
            ),
            (
                quote!(num_returns = 2),
                quote!(
                    fn f() -> (u8, u8, u8) {
                        (1, 2, 3)
                    }
                ),
                "needs a function returning a 2-tuple",
            ),
            (
                quote!(name = 3),
                quote!(
                    fn f() {}
                ),
                "name must be a string literal",
            ),
            (
                quote!(resources = ("db", 1.0)),
                quote!(
                    fn f() {}
                ),
                "list of (name, amount) pairs",
            ),
            (
                quote!(streaming),
                quote!(
                    fn f() -> Vec<u8> {
                        vec![1]
                    }
                ),
                "returns `impl Iterator<Item = T>`",
            ),
        ];
        for (attr, item, want) in cases {
            let got = remote_error(attr.clone(), item.clone());
            assert!(
                got.contains(want),
                "#[remote({attr})] {item}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn remote_accepts_the_fixed_forms() {
        let ok = [
            (
                quote!(),
                quote!(
                    fn f(x: String) -> usize {
                        x.len()
                    }
                ),
            ),
            (
                quote!(num_cpus = 1, name = "g"),
                quote!(
                    fn f() {}
                ),
            ),
            (
                quote!(num_returns = 3),
                quote!(
                    fn f() -> (u8, u8, u8) {
                        (1, 2, 3)
                    }
                ),
            ),
            (
                quote!(resources = [("db", 1.0)]),
                quote!(
                    fn f() {}
                ),
            ),
            (
                quote!(streaming),
                quote!(
                    fn f() -> impl Iterator<Item = u8> {
                        0..3
                    }
                ),
            ),
        ];
        for (attr, item) in ok {
            assert!(
                expand(attr.clone(), item.clone()).is_ok(),
                "#[remote({attr})] {item}"
            );
        }
    }

    #[test]
    fn options_forward_the_setters_of_task_options() {
        // The setters are written once, in rayfork's task.rs; the generated type only forwards.
        let out = expand(
            quote!(),
            quote!(
                fn f(x: u8) -> u8 {
                    x
                }
            ),
        )
        .expect("expands")
        .to_string();
        assert!(out.contains("task_option_setters ! (forward)"), "{out}");
        assert!(!out.contains("fn max_retries"), "{out}");
    }

    #[test]
    fn actor_misuses_say_what_is_wrong() {
        let cases = [
            (
                quote!(impl Default for C { fn default() -> Self { C } }),
                "inherent, non-generic impl block",
            ),
            (
                quote!(impl C { pub fn get(&self) -> u8 { 1 } }),
                "needs a constructor",
            ),
            (
                quote!(impl C { fn new() -> Self { C } pub fn add(&mut self, x: &u8) {} }),
                "must be owned serde types",
            ),
            (
                quote!(impl C { fn new() -> Option<Self> { None } }),
                "must return `Self` or `Result<Self, E>`",
            ),
            (
                quote!(impl C { fn new() -> Self { C } pub async fn get(&self) -> u8 { 1 } }),
                "cannot be async",
            ),
            (
                quote!(impl C { fn new() -> Self { C } pub fn get<T>(&self, x: T) {} }),
                "cannot be generic",
            ),
        ];
        for (item, want) in cases {
            let got = actor_error(item.clone());
            assert!(
                got.contains(want),
                "#[actor] {item}: got {got:?}, want {want:?}"
            );
        }
        let fixed = quote!(impl C { fn new() -> Self { C } pub fn add(&mut self, x: u8) {} async fn helper(&self) {} });
        assert!(expand_actor(fixed).is_ok());
    }
}
