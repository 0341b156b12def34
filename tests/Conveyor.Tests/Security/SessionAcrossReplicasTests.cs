using System.Net;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.DataProtection.KeyManagement;
using Microsoft.AspNetCore.DataProtection.Repositories;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Security;

/// <summary>
/// Several Api replicas behind one Service share the data-protection key ring: a sign-in form fetched
/// from one is accepted by another, a session cookie works on every replica and outlives a rollout.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed partial class SessionAcrossReplicasTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private static readonly Dictionary<string, string?> Settings = new() { ["RateLimiting:Enabled"] = "false" };

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>
    /// Starts a replica as in a pod: where the Api keeps no key ring itself, the ring is the replica's
    /// own (a pod's root filesystem is read-only, so ASP.NET Core keeps it in memory). In-process the
    /// default would be the test user's home directory, which every Api in this process shares.
    /// </summary>
    private Task<RunningApp> StartReplicaAsync(IDictionary<string, string?>? settings = null) =>
        fixture.StartApiAsync(settings ?? Settings, builder =>
            builder.Services.PostConfigure<KeyManagementOptions>(options => options.XmlRepository ??= new ReplicaOwnKeys()));

    [Fact]
    public async Task A_form_from_one_replica_signs_in_on_another_and_the_session_works_on_both()
    {
        await using var first = await StartReplicaAsync();
        await using var second = await StartReplicaAsync();
        using var browser = new Browser();

        await browser.SignInAsync(formFrom: first, postTo: second, TestKeys.Admin);

        Assert.Equal(HttpStatusCode.OK, await browser.SessionStatusAsync(first));
        Assert.Equal(HttpStatusCode.OK, await browser.SessionStatusAsync(second));
        await using var db = fixture.CreateDbContext();
        Assert.Single(await db.DataProtectionKeys.ToListAsync());
    }

    /// <summary>
    /// Two replicas started together on an empty ring can each create a key before either sees the
    /// other's. A session issued under one key must still work on the replica whose own default is the
    /// other: that replica reads the ring again when it meets a key it does not hold.
    /// </summary>
    [Fact]
    public async Task Replicas_that_each_created_their_own_first_key_accept_each_others_sessions()
    {
        await using var first = await StartReplicaAsync();
        using var browser = new Browser();
        using var other = new Browser();
        await browser.SignInAsync(formFrom: first, postTo: first, TestKeys.Admin);

        // The second replica loads its ring while the first one's key is not visible yet, as in a race.
        await using var db = fixture.CreateDbContext();
        var firstKeys = await db.DataProtectionKeys.AsNoTracking().ToListAsync();
        Assert.Single(firstKeys);
        await db.DataProtectionKeys.ExecuteDeleteAsync();
        await using var second = await StartReplicaAsync();
        await other.FetchSignInFormAsync(second);
        var secondKeys = await db.DataProtectionKeys.AsNoTracking().ToListAsync();
        Assert.Single(secondKeys);
        Assert.NotEqual(firstKeys[0].Xml, secondKeys[0].Xml);
        db.DataProtectionKeys.Add(new() { FriendlyName = firstKeys[0].FriendlyName, Xml = firstKeys[0].Xml });
        await db.SaveChangesAsync();

        Assert.Equal(HttpStatusCode.OK, await browser.SessionStatusAsync(second));
        await other.SignInAsync(formFrom: second, postTo: second, TestKeys.Admin);
        Assert.Equal(HttpStatusCode.OK, await other.SessionStatusAsync(first));
    }

    [Fact]
    public async Task A_session_outlives_a_rollout()
    {
        using var browser = new Browser();
        await using (var old = await StartReplicaAsync())
        {
            await browser.SignInAsync(formFrom: old, postTo: old, TestKeys.Reader);
        }

        await using var replacement = await StartReplicaAsync();
        Assert.Equal(HttpStatusCode.OK, await browser.SessionStatusAsync(replacement));
    }

    [Fact]
    public async Task With_a_keys_directory_the_replicas_share_the_ring_kept_there()
    {
        var directory = Directory.CreateTempSubdirectory("conveyor-keys-");
        try
        {
            var settings = new Dictionary<string, string?>(Settings) { ["Dashboard:Session:KeysDirectory"] = directory.FullName };
            await using var first = await StartReplicaAsync(settings);
            await using var second = await StartReplicaAsync(settings);
            using var browser = new Browser();

            await browser.SignInAsync(formFrom: first, postTo: second, TestKeys.Admin);

            Assert.Equal(HttpStatusCode.OK, await browser.SessionStatusAsync(first));
            Assert.NotEmpty(directory.GetFiles("key-*.xml"));
            await using var db = fixture.CreateDbContext();
            Assert.Empty(await db.DataProtectionKeys.ToListAsync());
        }
        finally
        {
            directory.Delete(recursive: true);
        }
    }

    [Theory]
    // Not a directory the Api can create (procfs), and a file where the directory should be.
    [InlineData("/proc/conveyor-keys", "cannot be written")]
    [InlineData("/etc/hostname", "cannot be written")]
    // Blank: neither unset (the database) nor a directory anyone meant.
    [InlineData(" ", "is blank")]
    public async Task A_keys_directory_the_api_cannot_keep_keys_in_stops_it_at_start(string directory, string reason)
    {
        var settings = new Dictionary<string, string?>(Settings) { ["Dashboard:Session:KeysDirectory"] = directory };

        // Before, the Api started: data protection creates the ring on first use, so only a sign-in found out.
        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await StartReplicaAsync(settings));

        Assert.Contains($"Dashboard:Session:KeysDirectory {reason}", failure.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// One cookie jar for every replica, as a browser has for the one address of a Service (cookies are
    /// per host, not per port); sends no API key.
    /// </summary>
    private sealed class Browser : IDisposable
    {
        private readonly HttpClient _client = new(new HttpClientHandler { CookieContainer = new CookieContainer(), AllowAutoRedirect = false })
        {
            Timeout = TimeSpan.FromSeconds(60),
        };

        public async Task SignInAsync(RunningApp formFrom, RunningApp postTo, string key)
        {
            string token;
            using (var page = await _client.GetAsync(new Uri(formFrom.BaseAddress, "/dashboard/login")))
            {
                Assert.Equal(HttpStatusCode.OK, page.StatusCode);
                var match = FormToken().Match(await page.Content.ReadAsStringAsync());
                Assert.True(match.Success, "The sign-in form has no anti-forgery field.");
                token = WebUtility.HtmlDecode(match.Groups["token"].Value);
            }

            using var form = new FormUrlEncodedContent(new Dictionary<string, string> { ["apiKey"] = key, ["__RequestVerificationToken"] = token });
            using var response = await _client.PostAsync(new Uri(postTo.BaseAddress, "/dashboard/login"), form);
            Assert.True(response.StatusCode == HttpStatusCode.Redirect, $"Sign-in answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        }

        public async Task FetchSignInFormAsync(RunningApp replica)
        {
            using var page = await _client.GetAsync(new Uri(replica.BaseAddress, "/dashboard/login"));
            Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        }

        public async Task<HttpStatusCode> SessionStatusAsync(RunningApp replica)
        {
            using var response = await _client.GetAsync(new Uri(replica.BaseAddress, "/dashboard/api/session"));
            return response.StatusCode;
        }

        public void Dispose() => _client.Dispose();
    }

    private sealed class ReplicaOwnKeys : IXmlRepository
    {
        private readonly List<XElement> _elements = [];

        public IReadOnlyCollection<XElement> GetAllElements()
        {
            lock (_elements)
            {
                return [.. _elements.Select(e => new XElement(e))];
            }
        }

        public void StoreElement(XElement element, string friendlyName)
        {
            lock (_elements)
            {
                _elements.Add(new XElement(element));
            }
        }
    }

    [GeneratedRegex("name=\"__RequestVerificationToken\" value=\"(?<token>[^\"]+)\"")]
    private static partial Regex FormToken();
}
