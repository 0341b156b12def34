using System.Net.Http.Json;
using Conveyor.Api.Jobs;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// A client of <c>GET /api/jobs</c> that reads a page at a time and goes on from the last cursor it was given,
/// as a client following <c>order=oldest</c> does (ADR 0013).
/// </summary>
internal sealed class JobFeedClient(HttpClient http, string query)
{
    private string? _cursor;

    /// <summary>Every job it was given, in the order given.</summary>
    public List<Guid> Seen { get; } = [];

    /// <summary>Reads one page; true when it was full and more may follow at once.</summary>
    public async Task<bool> PollAsync()
    {
        var url = _cursor is null ? $"/api/jobs?{query}" : $"/api/jobs?{query}&cursor={Uri.EscapeDataString(_cursor)}";
        var page = await http.GetFromJsonAsync<JobPage>(new Uri(url, UriKind.Relative));
        Assert.NotNull(page);
        Seen.AddRange(page.Items.Select(j => j.JobId));
        _cursor = page.NextCursor ?? _cursor;
        return page.NextCursor is not null && page.Items.Count > 0;
    }

    /// <summary>Reads pages until one is not full: to the end of what the listing gives now.</summary>
    public async Task PollToTheEndAsync()
    {
        while (await PollAsync())
        {
        }
    }
}
