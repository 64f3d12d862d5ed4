"""The LLM layer's errors, and how a provider's exception becomes one that says what to do."""

from __future__ import annotations

import re

__all__ = [
    "CUSTOM_PROVIDERS",
    "ContextWindowExceeded",
    "LLMCancelled",
    "LLMError",
    "LLMTimeout",
    "MissingAPIKey",
    "cancelled",
    "context_limit",
    "describe",
    "fatal_error",
    "is_litellm_exception",
    "no_key_message",
    "provider_of",
    "timed_out",
    "unknown_provider",
]

CUSTOM_PROVIDERS = ("scripted", "replay")
"""Providers of this package (no API, no key)."""


class LLMError(RuntimeError):
    """An LLM call failed; the message names the model and what to do about it."""


class LLMCancelled(LLMError):
    """The LLM call was cancelled by the caller."""


class LLMTimeout(LLMError):
    """The LLM call did not finish within its timeout."""


class MissingAPIKey(LLMError):
    """No API key is available for the model's provider."""


class ContextWindowExceeded(LLMError):
    """The prompt was longer than the model's context window.

    `limit_tokens` is the window the provider named in its message, when it named one.
    """

    def __init__(self, message: str, limit_tokens: int | None = None) -> None:
        super().__init__(message)
        self.limit_tokens = limit_tokens


_LIMIT = re.compile(
    r"(?:maximum context length|context (?:length|window)(?: limit)?|max(?:imum)? (?:input )?tokens)"
    r"[^0-9]{0,40}?([0-9][0-9,_]{2,})",
    re.IGNORECASE,
)


def context_limit(text: str) -> int | None:
    """The token limit a context-length error names ("maximum context length is 32768"), if any."""
    found = _LIMIT.search(text)
    if found is None:
        return None
    try:
        return int(re.sub(r"[,_]", "", found.group(1)))
    except ValueError:
        return None


def provider_of(model: str) -> str:
    """The provider prefix of a litellm model name ('' when there is none)."""
    return model.split("/", 1)[0] if "/" in model else ""


def is_litellm_exception(exc: BaseException) -> bool:
    """True for litellm's (and openai's) exception classes, which litellm maps itself."""
    return any(cls.__module__.split(".")[0] in ("litellm", "openai") for cls in type(exc).__mro__)


def no_key_message(model: str, missing: list[str]) -> str:
    """What to set when a model's provider has no key."""
    return (
        f"No API key for model '{model}': set LLM_API_KEY or {' and '.join(missing)} "
        "in the environment or in a .env file"
    )


def describe(exc: BaseException | None) -> str:
    """A one-line description of an exception, without litellm's prefixes and tracebacks.

    Secrets are masked: error messages travel to records, to the notebook and (as
    ``llm_query``'s "Error: ..." strings) into sandboxes, which must never see a key.
    """
    if exc is None:
        return ""
    from ..config import redact_secrets

    message = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    message = message.split("Traceback (most recent call last)", 1)[0]
    message = redact_secrets(message.split("\nTraceback", 1)[0].strip())
    first = message.splitlines()[0].rstrip(". ") if message else type(exc).__name__
    return first if len(first) <= 300 else first[:299] + "…"


def fatal_error(model: str, exc: BaseException, missing_keys: list[str], has_key: bool) -> LLMError:
    """Turn a non-transient provider error into an LLMError that says what to do.

    `missing_keys` are the credentials litellm misses for the model; `has_key` is True when the
    client was given a key of its own (LLM_API_KEY).
    """
    name = type(exc).__name__
    text = describe(exc)
    if name == "AuthenticationError" or _about_credentials(exc, missing_keys, has_key):
        if missing_keys and not has_key:
            return MissingAPIKey(no_key_message(model, missing_keys))
        provider = provider_of(model) or "<PROVIDER>"
        return LLMError(
            f"Authentication failed for model '{model}': {text}. Set LLM_API_KEY or "
            f"{provider.upper()}_API_KEY (in the environment or a .env file) to a valid key"
        )
    if name == "LiteLLMUnknownProvider" or "LLM Provider NOT provided" in str(exc):
        return unknown_provider(model)
    simple: dict[str, str] = {
        "NotFoundError": f"Model '{model}' was not found: {text}. Check the model name (litellm "
        "format 'provider/model') and that your key has access to it",
        "PermissionDeniedError": f"Access denied for model '{model}': {text}. Check the key's "
        "permissions",
        "PaymentRequiredError": f"The provider refused model '{model}' for billing reasons: {text}. "
        "Check the account's credits",
        "ContentPolicyViolationError": f"Model '{model}' refused the request (content policy): "
        f"{text}. Rephrase the task",
    }
    simple["BudgetExceededError"] = simple["PaymentRequiredError"]
    if name in simple:
        return LLMError(simple[name])
    if name == "ContextWindowExceededError":
        return ContextWindowExceeded(
            f"The prompt is too long for model '{model}': {text}. Shorten the context or "
            "use a model with a larger context window",
            context_limit(str(exc)),
        )
    if name in ("BadRequestError", "UnsupportedParamsError", "UnprocessableEntityError"):
        return LLMError(
            f"Model '{model}' rejected the request: {text}. Check the model name and the "
            "call parameters (temperature, max_tokens)"
        )
    return LLMError(f"LLM call to model '{model}' failed: {name}: {text}")


def unknown_provider(model: str) -> LLMError:
    """The error for a model name litellm cannot route."""
    return LLMError(
        f"Unknown LLM provider for model '{model}': name models in litellm's "
        "'provider/model' format, e.g. 'openai/gpt-4o-mini' or "
        "'openrouter/google/gemini-3-flash-preview'"
    )


def _about_credentials(exc: BaseException, missing_keys: list[str], has_key: bool) -> bool:
    """True when the error is about credentials that are indeed missing (never transient)."""
    if has_key or not missing_keys:
        return False
    text = str(exc).lower()
    return any(w in text for w in ("credential", "api_key", "api key", "auth"))


def timed_out(model: str, limit: float, attempts: int, last: BaseException | None) -> LLMTimeout:
    """The error of a call that ran out of time."""
    tail = f" (last error: {describe(last)})" if last is not None else ""
    shown = f"{limit:.0f}" if limit >= 10 else f"{limit:.2g}"  # a run's time left: 0.4999 s
    return LLMTimeout(
        f"LLM call to model '{model}' timed out after {shown} s "
        f"({attempts} attempt{'s' if attempts != 1 else ''}){tail}; raise the timeout or "
        "check the provider's status"
    )


def cancelled(model: str) -> LLMCancelled:
    """The error of a call the caller cancelled."""
    return LLMCancelled(f"LLM call to model '{model}' was cancelled")
