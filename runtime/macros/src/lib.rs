//! The `#[remote]` attribute of rayfork (use it as `rayfork::remote`).
//!
//! Owns code generation only: the registry entry, `f::remote`, `f::options`. What the
//! generated code calls lives in `rayfork::__private`.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{
    Expr, FnArg, GenericArgument, ItemFn, Lit, Meta, PathArguments, ReturnType, Token, Type,
};

/// Makes a free function a remote function: `f::remote(args..)` submits it as a task and
/// returns an `ObjectRef` of its result; `f::options()` sets per-call options.
///
/// Attribute options: `num_cpus = 0.5`, `max_retries = 0`, `name = "..."`,
/// `retry_exceptions = true`.
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
}

fn parse_attrs(attr: proc_macro2::TokenStream) -> syn::Result<Attrs> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut options = Vec::new();
    for m in metas {
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
            "max_retries" => options.push(quote!(.max_retries(#v))),
            "retry_exceptions" => options.push(quote!(.retry_exceptions(#v))),
            "name" => {
                if !matches!(v, Expr::Lit(l) if matches!(l.lit, Lit::Str(_))) {
                    return Err(syn::Error::new_spanned(v, "name must be a string literal"));
                }
                options.push(quote!(.name(#v)))
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    &nv.path,
                    "unknown option; expected num_cpus, max_retries, retry_exceptions or name",
                ));
            }
        }
    }
    Ok(Attrs { options })
}

/// If `ty` is `Result<T, ..>` (any path ending in `Result` with generic arguments), its `T`.
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
    let (out_ty, finish) = match &sig.output {
        ReturnType::Default => (quote!(()), quote!(finish)),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (quote!(#ok), quote!(finish_result)),
            None => (quote!(#ty), quote!(finish)),
        },
    };
    let options = &attrs.options;
    let doc =
        format!("Remote glue of [`{name}`](fn@{name}): `{name}::remote(..)` submits it as a task.");
    let p = quote!(::rayfork::__private);
    let span = Span::call_site();
    let name_str = syn::LitStr::new(&name.to_string(), span);
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

            /// Submits a call with the default options; returns a ref to the result.
            pub fn remote(#(#args: impl ::rayfork::IntoArg<#arg_tys>),*) -> ::rayfork::ObjectRef<#out_ty> {
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
                /// See [`rayfork::TaskOptions::max_retries`].
                pub fn max_retries(self, n: u32) -> Self { Options(self.0.max_retries(n)) }
                /// See [`rayfork::TaskOptions::num_cpus`].
                pub fn num_cpus(self, n: f64) -> Self { Options(self.0.num_cpus(n)) }
                /// See [`rayfork::TaskOptions::name`].
                pub fn name(self, name: impl Into<String>) -> Self { Options(self.0.name(name)) }
                /// See [`rayfork::TaskOptions::retry_exceptions`].
                pub fn retry_exceptions(self, yes: bool) -> Self {
                    Options(self.0.retry_exceptions(yes))
                }
                /// See [`rayfork::TaskOptions::retry_exceptions_matching`].
                pub fn retry_exceptions_matching<I, S>(self, patterns: I) -> Self
                where
                    I: IntoIterator<Item = S>,
                    S: Into<String>,
                {
                    Options(self.0.retry_exceptions_matching(patterns))
                }
                /// Submits a call with these options; returns a ref to the result.
                pub fn remote(self, #(#args: impl ::rayfork::IntoArg<#arg_tys>),*) -> ::rayfork::ObjectRef<#out_ty> {
                    #p::submit(NAME, &self.0, move |_cx| {
                        Ok(vec![#(::rayfork::IntoArg::<#arg_tys>::into_arg(#args, _cx)?),*])
                    })
                }
            }

            fn __invoke(inv: #p::Invocation<'_>) -> #p::Outcome {
                if let Err(e) = #p::check_arity(&inv, #n) {
                    return #p::arg_error(e);
                }
                #(
                    let #args: #arg_tys = match #p::decode_arg(&inv, #idx) {
                        Ok(v) => v,
                        Err(e) => return #p::arg_error(e),
                    };
                )*
                #p::#finish(&inv, super::#name(#(#args),*))
            }

            #[#p::linkme::distributed_slice(#p::REMOTE_FNS)]
            #[linkme(crate = #p::linkme)]
            static __ENTRY: #p::RemoteFn = #p::RemoteFn { name: NAME, call: __invoke };
        }
    })
}
