using System.Text.Json;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// How an entry of the management API's queue listing is read, by the error-queue client and the dashboard
/// alike: an answer from something other than RabbitMQ (a proxy's page, another service) must not throw.
/// </summary>
public static class ManagementQueueJson
{
    /// <summary>The queue's name, or null for an entry that names none.</summary>
    public static string? Name(JsonElement queue) =>
        queue.ValueKind == JsonValueKind.Object && queue.TryGetProperty("name", out var name) && name.ValueKind == JsonValueKind.String
            ? name.GetString()
            : null;

    /// <summary>
    /// A counter, or null when it is absent (counters appear a moment after a queue is declared) or not a whole
    /// number that fits (2.5, 1e30).
    /// </summary>
    public static long? Count(JsonElement queue, string field) =>
        queue.TryGetProperty(field, out var value) && value.ValueKind == JsonValueKind.Number && value.TryGetInt64(out var number)
            ? number
            : null;
}
