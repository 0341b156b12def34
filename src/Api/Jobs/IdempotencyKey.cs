using Microsoft.Extensions.Primitives;

namespace Conveyor.Api.Jobs;

/// <summary>
/// The optional <c>Idempotency-Key</c> request header: 1 to 200 printable ASCII characters but <c>#</c>,
/// which is reserved: a batch's jobs are stored under its key with <c>#</c> and their place appended, and
/// a client's key <c>X#0</c> would otherwise be the key of job 0 of a batch sent as <c>X</c>.
/// </summary>
internal static class IdempotencyKey
{
    public const string HeaderName = "Idempotency-Key";
    public const int MaxLength = 200;

    /// <summary>
    /// The longest key of a batch: each of its jobs is stored under the key with <c>#</c> and the job's
    /// place appended (<see cref="ForBatchJob"/>), which must fit in <see cref="MaxLength"/>.
    /// </summary>
    public const int MaxBatchLength = MaxLength - 4;

    /// <summary>The key, or null when the header is absent; records an error when it is malformed.</summary>
    public static string? Read(IHeaderDictionary headers, FieldErrors errors) => Read(headers, errors, MaxLength);

    /// <summary>The key of the job at <paramref name="index"/> (0 to 99) of a batch sent with <paramref name="batchKey"/>.</summary>
    public static string? ForBatchJob(string? batchKey, int index) => batchKey is null ? null : $"{batchKey}{BatchSeparator}{index}";

    private const char BatchSeparator = '#';

    /// <summary>As <see cref="Read(IHeaderDictionary, FieldErrors)"/>, for keys of at most <paramref name="maxLength"/> characters.</summary>
    public static string? Read(IHeaderDictionary headers, FieldErrors errors, int maxLength)
    {
        if (!headers.TryGetValue(HeaderName, out var values))
        {
            return null;
        }

        if (values.Count != 1 || !IsValid(values, maxLength))
        {
            errors.Add(HeaderName, $"Must be sent once, as 1 to {maxLength} printable ASCII characters other than # (reserved for the keys of a batch's jobs).");
            return null;
        }

        return values.ToString();
    }

    private static bool IsValid(StringValues values, int maxLength)
    {
        var key = values.ToString();
        return key.Length > 0 && key.Length <= maxLength && key.All(c => c is >= ' ' and <= '~' and not BatchSeparator);
    }
}
