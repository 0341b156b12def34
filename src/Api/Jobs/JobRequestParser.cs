using Conveyor.Contracts;
using System.Text.Json;

namespace Conveyor.Api.Jobs;

/// <summary>Turns a raw body into a <see cref="JobRequest"/>, or into errors that name each bad field.</summary>
internal static class JobRequestParser
{
    /// <summary>The key under which errors about the body as a whole are reported (a JSON path root).</summary>
    public const string BodyField = "$";

    private static readonly JsonDocumentOptions DocumentOptions = new()
    {
        // Two values for one field would make "which one counts" a guess.
        AllowDuplicateProperties = false,
    };

    public static bool IsKnownKind(string kind) => JobKinds.All.Contains(kind, StringComparer.Ordinal);

    /// <summary>Null when <paramref name="errors"/> received at least one error.</summary>
    public static JobRequest? Parse(string kind, ReadOnlyMemory<byte> body, FieldErrors errors)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(body, DocumentOptions);
        }
        catch (JsonException ex)
        {
            errors.Add(BodyField, ex.LineNumber is { } line && ex.BytePositionInLine is { } position
                ? $"The body is not valid JSON (line {line + 1}, byte {position + 1})."
                : "The body is not valid JSON; each field may appear once.");
            return null;
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                errors.Add(BodyField, "The body must be a JSON object.");
                return null;
            }

            var fields = new JsonFields(document.RootElement, errors);
            return kind switch
            {
                JobKinds.ChargePayment => ChargePaymentRequest.Read(fields),
                JobKinds.DeliverWebhook => DeliverWebhookRequest.Read(fields),
                JobKinds.GenerateReport => GenerateReportRequest.Read(fields),
                _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Not a job kind."),
            };
        }
    }
}
