using System.Buffers;
using System.Text.Json;

namespace Conveyor.Contracts;

/// <summary>
/// The value rules of the contracts' fields, one copy for every way in: the Api applies them to a
/// request before it publishes, the worker to every command it receives (a producer that publishes
/// straight to RabbitMQ skips the Api), and a producer may apply them before it publishes. Each
/// returns what is wrong, worded for a person, or null when the value is fine.
/// </summary>
public static class ContractRules
{
    public const int MaxAccountIdLength = 100;

    /// <summary>10^15 minor units: far above any real charge, well inside a double's exact range.</summary>
    public const long MaxAmountMinor = 1_000_000_000_000_000;

    public const int MaxPageSize = 10_000;
    public const int MaxUrlLength = 2048;
    public const int MaxEventTypeLength = 200;

    /// <summary>The longest host name DNS can resolve (RFC 1035), in its ASCII form and without a final dot.</summary>
    public const int MaxHostNameLength = 253;

    /// <summary>The longest dot-separated label of a host name DNS can resolve (RFC 1035).</summary>
    public const int MaxHostLabelLength = 63;

    /// <summary>
    /// How deep a webhook's payload may nest objects and arrays (the payload object is level 1). Every
    /// JSON writer and reader the command meets stops at 64 levels: System.Text.Json's default, which
    /// MassTransit's serializer and the Api's scheduled-job envelope keep. The payload starts at level 3
    /// of a message envelope (envelope, command, payload), so a payload of n levels needs n + 2 of the
    /// 64; at level 4 of the fault MassTransit publishes about a failed command (envelope, fault,
    /// command, payload), n + 3. The Api's body parser alone would let a payload reach 63 levels:
    /// accepted, then never published; and a worker that ran such a command could not publish its
    /// fault. 32 leaves half the depth for such wrappers and is far deeper than event payloads go.
    /// </summary>
    public const int MaxPayloadDepth = 32;

    internal const string Required = "Is required.";

    private static readonly SearchValues<char> AccountIdChars =
        SearchValues.Create("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-:.");

    /// <summary>A business idempotency key: any UUID but the all-zero one.</summary>
    public static string? Id(Guid value) => value == Guid.Empty ? "Must not be the all-zero UUID." : null;

    public static string? InRange(long value, long min, long max) =>
        value < min || value > max ? $"Must be between {min} and {max}." : null;

    public static string? AccountId(string? value)
    {
        if (value is null)
        {
            return Required;
        }

        if (value.Length is 0 or > MaxAccountIdLength)
        {
            return $"Must be 1 to {MaxAccountIdLength} characters long.";
        }

        return value.AsSpan().ContainsAnyExcept(AccountIdChars)
            ? "May contain only letters, digits and the characters _ - : ."
            : null;
    }

    /// <summary>An ISO 4217 code of a currency in circulation, in upper case.</summary>
    public static string? Currency(string? value) =>
        value is null ? Required
        : CurrencyCodes.IsActive(value) ? null
        : "Must be an active ISO 4217 currency code in upper case, such as EUR.";

    /// <summary>
    /// Sent as an HTTP header (<c>Conveyor-Event-Type</c>), so only what a header value can hold:
    /// printable ASCII. HttpClient refuses anything else when it sends, and that refusal looks like a
    /// network failure, which would be retried for hours. Nor a space at either end: HTTP drops those
    /// from a header value, so the receiver reads another event type than the one the signature's
    /// <c>v2</c> covers, and no delivery of it could ever be verified.
    /// </summary>
    public static string? EventType(string? value)
    {
        if (string.IsNullOrWhiteSpace(value) || value.Length > MaxEventTypeLength)
        {
            return $"Must be 1 to {MaxEventTypeLength} characters long and not blank.";
        }

        if (value.AsSpan().ContainsAnyExceptInRange(' ', '~'))
        {
            return "May contain only printable ASCII characters (letters a-z and A-Z, digits, spaces and punctuation): it is sent as an HTTP header.";
        }

        return value[0] == ' ' || value[^1] == ' '
            ? "Must not begin or end with a space: it is sent as an HTTP header, whose receiver drops them, and the signature covers it as sent."
            : null;
    }

    /// <summary>Any JSON value but null, nesting objects and arrays at most <see cref="MaxPayloadDepth"/> deep.</summary>
    public static string? Payload(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.Undefined or JsonValueKind.Null => Required,
        _ when NestsDeeper(value, MaxPayloadDepth) => PayloadTooDeep(MaxPayloadDepth),
        _ => null,
    };

    public static string PayloadTooDeep(int maxDepth) => $"Must nest objects and arrays at most {maxDepth} levels deep.";

    /// <summary>
    /// Whether <paramref name="value"/> holds objects or arrays more than <paramref name="levels"/> deep
    /// (the value itself, when an object or array, is level 1).
    /// </summary>
    public static bool NestsDeeper(JsonElement value, int levels) => value.ValueKind switch
    {
        // Recursion is bounded: System.Text.Json refuses to read a document deeper than 64 levels.
        JsonValueKind.Object => levels == 0 || value.EnumerateObject().Any(property => NestsDeeper(property.Value, levels - 1)),
        JsonValueKind.Array => levels == 0 || value.EnumerateArray().Any(element => NestsDeeper(element, levels - 1)),
        _ => false,
    };

    /// <summary>
    /// Text that ends up in a PostgreSQL text or jsonb column, stored or compared: PostgreSQL refuses the
    /// character U+0000 in both; and no other control character belongs in a name, type, key or URL.
    /// </summary>
    public static string? NoControlCharacters(string value) =>
        value.Any(char.IsControl) ? "Must not contain control characters." : null;

    /// <summary>
    /// An absolute http or https URL with a host and no user information. Where it may point is checked
    /// where it is used: the Api refuses internal address literals, the worker every internal address a
    /// name resolves to. Credentials in the URL are refused: the delivery would not send them, and the
    /// job's row, its status and the logs would show them. Port 0 is refused too: no TCP connection can
    /// be made to it, and each attempt's refused or unanswered connect reads as a network failure, which
    /// would be retried and redelivered for about an hour before the webhook reached <c>_error</c>.
    /// </summary>
    public static string? WebhookUrl(string? value)
    {
        if (value is null)
        {
            return Required;
        }

        if (value.Length > MaxUrlLength)
        {
            return $"Must be at most {MaxUrlLength} characters long.";
        }

        // Uri keeps some of them as they are; the worker stores the URL as text, which refuses a NUL.
        if (NoControlCharacters(value) is { } problem)
        {
            return problem;
        }

        if (!Uri.TryCreate(value, UriKind.Absolute, out var url)
            || (url.Scheme != Uri.UriSchemeHttp && url.Scheme != Uri.UriSchemeHttps)
            || url.Host.Length == 0)
        {
            return "Must be an absolute http or https URL.";
        }

        if (url.Port == 0)
        {
            return "Must not name port 0: no connection can be made to it.";
        }

        // A name with a label over 63 characters is no DNS name to Uri, which calls its host Basic.
        if ((url.HostNameType is UriHostNameType.Dns or UriHostNameType.Basic) && !IsResolvableHostName(url.IdnHost.TrimEnd('.')))
        {
            return $"Its host name must be at most {MaxHostNameLength} characters long (in its ASCII form), each dot-separated part at most {MaxHostLabelLength}: no longer one can be resolved.";
        }

        return url.UserInfo.Length > 0
            ? "Must not contain user information (user:password@): deliveries are authenticated by their signature, and the URL is stored and shown as given."
            : null;
    }

    /// <summary>
    /// Whether DNS could resolve <paramref name="host"/> at all. A longer name never resolves (.NET refuses
    /// it before asking), and that failure reads as a network failure, which would be retried and
    /// redelivered for about an hour before the webhook reached <c>_error</c>.
    /// </summary>
    private static bool IsResolvableHostName(string host)
    {
        if (host.Length > MaxHostNameLength)
        {
            return false;
        }

        foreach (var label in host.Split('.'))
        {
            if (label.Length > MaxHostLabelLength)
            {
                return false;
            }
        }

        return true;
    }
}

/// <summary>A field of a contract that breaks its rule: the field's camelCase name, as on the wire, and what is wrong.</summary>
public sealed record ContractViolation(string Field, string Problem)
{
    /// <summary>The violations among (field, problem) pairs, in order; problems that are null are no violation.</summary>
    internal static IReadOnlyList<ContractViolation> Collect(params ReadOnlySpan<(string Field, string? Problem)> checks)
    {
        List<ContractViolation>? found = null;
        foreach (var (field, problem) in checks)
        {
            if (problem is not null)
            {
                (found ??= []).Add(new ContractViolation(field, problem));
            }
        }

        return found ?? (IReadOnlyList<ContractViolation>)[];
    }

    /// <summary>One line for logs and fault headers: <c>field: problem; field: problem</c>.</summary>
    public static string Describe(IEnumerable<ContractViolation> violations) =>
        string.Join("; ", violations.Select(v => $"{v.Field}: {v.Problem}"));
}
