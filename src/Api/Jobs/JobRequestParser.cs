using Conveyor.Contracts;
using System.Text.Json;

namespace Conveyor.Api.Jobs;

/// <summary>Turns a raw body into a <see cref="JobRequest"/>, or into errors that name each bad field.</summary>
internal static class JobRequestParser
{
    public static bool IsKnownKind(string kind) => JobKinds.All.Contains(kind, StringComparer.Ordinal);

    /// <summary>The optional top-level field that schedules a job for later; the other fields are the command's.</summary>
    public const string RunAtField = "runAt";

    /// <summary>How far ahead a job may be scheduled.</summary>
    public const int MaxRunAheadDays = 365;

    /// <summary>What a new job's <see cref="RunAtField"/> outside its window is told.</summary>
    public static readonly string RunAtWindowError = $"Must be in the future and at most {MaxRunAheadDays} days ahead.";

    /// <summary>The field of a kind's body that holds its business id, the job's unique key within the kind.</summary>
    public static string BusinessIdField(string kind) => kind switch
    {
        JobKinds.ChargePayment => ChargePaymentRequest.BusinessIdField,
        JobKinds.DeliverWebhook => DeliverWebhookRequest.BusinessIdField,
        JobKinds.GenerateReport => GenerateReportRequest.BusinessIdField,
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Not a job kind."),
    };

    /// <summary>Null when <paramref name="errors"/> received at least one error.</summary>
    /// <param name="webhookUrls">What the settings allow as a webhook's URL.</param>
    /// <param name="unknownFields">
    /// <see cref="UnknownFields.Refuse"/> for a new submission; <see cref="UnknownFields.Ignore"/> for a
    /// body accepted earlier (a stored request), which an Api of an earlier version may have let through.
    /// </param>
    /// <param name="deferRunAtWindow">
    /// True for a submission: a <see cref="RunAtField"/> in the past or too far ahead is no error here but
    /// <see cref="JobRequest.RunAtOutsideWindow"/>, for the submitter, which answers a repeat of an accepted
    /// request with its job (its time may have passed since) and refuses a new one.
    /// </param>
    public static JobRequest? Parse(
        string kind, ReadOnlyMemory<byte> body, FieldErrors errors, DateTimeOffset now, WebhookUrlRules webhookUrls,
        UnknownFields unknownFields = UnknownFields.Refuse, bool deferRunAtWindow = false)
    {
        using var document = JsonBody.ParseObject(body, errors, InvalidJson);
        return document is null ? null : Read(kind, document.RootElement, errors, now, webhookUrls, unknownFields, deferRunAtWindow);
    }

    /// <summary>
    /// A job's stored request (an immediate submission's body, kept in its row until a worker receives
    /// the command) read again to publish the command once more; null when this version's rules or
    /// settings refuse it now (the reasons in <paramref name="errors"/>), or when it no longer names the
    /// job's <paramref name="businessKey"/> or schedules it for later (no error then).
    /// </summary>
    public static JobRequest? ReadStored(
        string kind, byte[] body, string businessKey, FieldErrors errors, DateTimeOffset now, WebhookUrlRules webhookUrls)
    {
        var request = Parse(kind, body, errors, now, webhookUrls, UnknownFields.Ignore);
        return request is null || errors.Count > 0 || request.RunAt is not null || request.BusinessKey != businessKey ? null : request;
    }

    /// <summary>
    /// As <see cref="Parse"/>, for a JSON object parsed already (one job of a batch, whose body was
    /// checked and parsed whole).
    /// </summary>
    public static JobRequest? Read(
        string kind, JsonElement body, FieldErrors errors, DateTimeOffset now, WebhookUrlRules webhookUrls,
        UnknownFields unknownFields = UnknownFields.Refuse, bool deferRunAtWindow = false)
    {
        var fields = new JsonFields(body, errors);
        var (runAt, outsideWindow) = ReadRunAt(fields, errors, now, deferRunAtWindow);
        var request = kind switch
        {
            JobKinds.ChargePayment => ChargePaymentRequest.Read(fields),
            JobKinds.DeliverWebhook => DeliverWebhookRequest.Read(fields, webhookUrls),
            JobKinds.GenerateReport => GenerateReportRequest.Read(fields),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Not a job kind."),
        };
        if (unknownFields == UnknownFields.Refuse)
        {
            fields.RejectUnknown();
        }

        if (request is null || fields.HasErrors)
        {
            // Not a repeat of an accepted request either: every bad field is named at once.
            if (outsideWindow)
            {
                errors.Add(RunAtField, RunAtWindowError);
            }

            return null;
        }

        request.RunAt = runAt;
        request.RunAtOutsideWindow = outsideWindow;
        return request;
    }

    /// <summary>Why a body is not JSON, and where, for the client.</summary>
    public static string InvalidJson(JsonException exception) =>
        exception.LineNumber is { } line && exception.BytePositionInLine is { } position
            ? $"The body is not valid JSON (line {line + 1}, byte {position + 1})."
            : "The body is not valid JSON; each field may appear once.";

    private static (DateTimeOffset? RunAt, bool OutsideWindow) ReadRunAt(JsonFields fields, FieldErrors errors, DateTimeOffset now, bool deferWindow)
    {
        if (fields.OptionalTimestamp(RunAtField) is not { } runAt)
        {
            return (null, false);
        }

        if (runAt <= now || runAt > now.AddDays(MaxRunAheadDays))
        {
            if (deferWindow)
            {
                return (runAt, true);
            }

            errors.Add(RunAtField, RunAtWindowError);
            return (null, false);
        }

        return (runAt, false);
    }
}

/// <summary>What <see cref="JobRequestParser.Parse"/> does with fields no job kind has.</summary>
internal enum UnknownFields
{
    Refuse,
    Ignore,
}
